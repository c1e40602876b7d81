'use strict';
// Node oracle for metamesh's Hessian 2.0 codec, using hessian.js (and js-to-java for Java types).
//   node hessian_oracle.js read FILE...  -> one JSON line per file: {name, value, class}
//       value: the plain decode, with {$bytes}, {$date}, {$double} for what JSON cannot carry
//       and {$ref: n} for a container already printed (same identity); class: the $class that
//       hessian.js's typed decode reports for the top-level value (null when it has none)
//   node hessian_oracle.js write DIR    -> one Hessian 2.0 file per case, written by hessian.js
const fs = require('fs');
const path = require('path');
const hessian = require('hessian.js');
const java = require('js-to-java');

function plain(value, seen) {
  if (value === null || value === undefined) return null;
  if (typeof value === 'number') {
    if (Number.isNaN(value) || !Number.isFinite(value) || Object.is(value, -0)) {
      return { $double: String(Object.is(value, -0) ? '-0' : value) };
    }
    return value;
  }
  if (typeof value !== 'object') return value;
  if (Buffer.isBuffer(value)) return { $bytes: value.toString('hex') };
  if (value instanceof Date) return { $date: value.getTime() };
  if (seen.has(value)) return { $ref: seen.get(value) };
  seen.set(value, seen.size);
  if (Array.isArray(value)) return value.map((item) => plain(item, seen));
  const out = {};
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
  for (const [k, v] of entries) out[String(k)] = plain(v, seen);
  return out;
}

function read(files) {
  for (const file of files) {
    const name = path.basename(file, '.bin');
    const buf = fs.readFileSync(file);
    let line;
    try {
      const typed = hessian.decode(buf, '2.0', true);
      const cls = typed && typeof typed === 'object' && typed.$class ? typed.$class : null;
      line = { name, value: plain(hessian.decode(buf, '2.0'), new Map()), class: cls };
    } catch (err) {
      line = { name, error: String(err && err.message) };
    }
    console.log(JSON.stringify(line));
  }
}

function user() {
  return java('com.example.User', {
    id: java.long(42),
    name: 'alice',
    age: java.int(30),
    tags: ['t1', 't2'],
    attrs: { score: 7 },
    addr: java('com.example.Address', { city: 'Paris', zip: java.int(75001) }),
  });
}

function cases() {
  const shared = { k: 'v' };
  const addr = java('com.example.Address', { city: 'Oslo', zip: 1 });
  return {
    int_small: 7,
    int_java: java.int(-262145),
    int_max: java.int(2147483647),
    long_small: java.long(5),
    long_big: java.long('9223372036854775807'),
    long_min: java.long('-9223372036854775808'),
    number_beyond_int32: 1099511627776,
    double: 2.5,
    double_java: java.double(3),
    double_pi: Math.PI,
    bool: true,
    null: null,
    str_utf8: 'h\u00e9llo w\u00f6rld \u2713',
    str_emoji: 'a\ud83d\ude00b',
    str_mixed_70000: 'h\u00e9\u2713\ud83d\ude00xyz'.repeat(8750),
    bytes: Buffer.from([0, 1, 2, 255]),
    bytes_5000: Buffer.alloc(5000, 7),
    date: new Date(1700000000123),
    list: [1, 'a', null, 2.5, true],
    int_array: java.array.int([1, 2, 3]),
    string_array: java.array.String(['a', 'b']),
    map_str: { a: 1, b: [1, 2] },
    map_int_keys: new Map([[1, 'x'], [2, 'y']]),
    typed_map: java('java.util.TreeMap', { k: 1 }),
    pojo_user: user(),
    enum: java.enum('com.example.Color', 'GREEN'),
    shared_pojo: [addr, addr],
    shared_map: [shared, shared],
    users: [user(), user()],
  };
}

function write(dir) {
  for (const [name, value] of Object.entries(cases())) {
    fs.writeFileSync(path.join(dir, `${name}.bin`), hessian.encode(value, '2.0'));
  }
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'read') read(rest);
else if (command === 'write') write(rest[0]);
else throw new Error('usage: hessian_oracle.js read FILE... | write DIR');
