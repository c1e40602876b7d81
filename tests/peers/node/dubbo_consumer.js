'use strict';
// A scriptable Dubbo consumer for metamesh's codec tests: sofa-rpc-node + dubbo-remoting
// ("sofa") or apache-dubbo-js DirectlyDubbo ("adj"), one connection to 127.0.0.1:<port>.
// Usage: node dubbo_consumer.js sofa|adj <port>; prints "READY", then reads JSON commands on
// stdin, one per line, and answers each with one JSON line:
//   {"op":"call","method":"sayHello","args":[["string","world"]],"attachments":{"k":"v"}}
//     -> {"ok":true,"result":...} or {"ok":false,"error":"message"}
//   {"op":"heartbeat"} (sofa only) -> {"ok":true,"ack":<id>} once the heartbeat ack arrives
// Arguments are [javaType, value] pairs: string, int, long, map.
const readline = require('readline');
const java = require('js-to-java');

const IFACE = 'org.apache.dubbo.demo.DemoService';
const kind = process.argv[2];
const port = Number(process.argv[3]);
const logger = { info() {}, warn() {}, error() {}, debug() {} };

function toJava([type, value]) {
  if (type === 'string') return java.String(value);
  if (type === 'int') return java.int(value);
  if (type === 'long') return java.long(value);
  if (type === 'map') return java.Map(value);
  throw new Error('unknown arg type ' + type);
}

function plain(v) {
  return v && typeof v === 'object' && typeof v.toNumber === 'function' ? v.toNumber() : v;
}

async function sofa() {
  const { RpcClient } = require('sofa-rpc-node').client;
  const client = new RpcClient({ logger, protocol: require('dubbo-remoting') });
  const consumer = client.createConsumer({
    interfaceName: IFACE, version: '0.0.0',
    serverHost: `dubbo://127.0.0.1:${port}?serialization=hessian2`,
  });
  await consumer.ready();
  return {
    async call(cmd) {
      const opts = { responseTimeout: 5000 };
      if (cmd.attachments) opts.requestProps = cmd.attachments;
      return consumer.invoke(cmd.method, cmd.args.map(toJava), opts);
    },
    async heartbeat() {
      const conn = await consumer.getConnection({ meta: {}, methodName: 'heartbeat', args: [], requestProps: {} });
      const id = 7000 + Math.floor(Math.random() * 1000);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no heartbeat ack')), 5000);
        conn._decoder.on('heartbeat_ack', (ack) => {
          if (Number(ack.packetId) === id) { clearTimeout(timer); resolve(id); }
        });
        conn._encoder.writeHeartbeat(id, { timeout: 3000, clientUrl: '' });
      });
    },
  };
}

async function adj() {
  const { DirectlyDubbo } = require('apache-dubbo-js');
  const dubbo = DirectlyDubbo.from({ dubboAddress: `127.0.0.1:${port}`, dubboVersion: '2.0.2', dubboInvokeTimeout: 5 });
  const svcs = {};
  return {
    async call(cmd) {
      if (!svcs[cmd.method]) {
        svcs[cmd.method] = dubbo.proxyService({
          dubboInterface: IFACE, version: '0.0.0',
          methods: { [cmd.method]: (...a) => a.map(toJava) },
        });
      }
      const { res, err } = await svcs[cmd.method][cmd.method](...cmd.args);
      if (err) throw err;
      return res;
    },
    async heartbeat() { throw new Error('heartbeat not scriptable with apache-dubbo-js'); },
  };
}

(async () => {
  const peer = kind === 'adj' ? await adj() : await sofa();
  console.log('READY');
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const cmd = JSON.parse(line);
    let out;
    try {
      if (cmd.op === 'heartbeat') out = { ok: true, ack: await peer.heartbeat() };
      else out = { ok: true, result: plain(await peer.call(cmd)) };
    } catch (e) {
      out = { ok: false, error: String(e && e.message || e) };
    }
    console.log(JSON.stringify(out));
  }
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
