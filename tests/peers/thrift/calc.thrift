// Interop IDL for the Thrift codec tests: compiled with `thrift --gen py` (Apache) at test time
// and loaded at runtime by thriftpy2.
namespace py metamesh_calc

exception CalcError {
  1: i32 code,
  2: string message,
}

struct Pair {
  1: i64 a,
  2: i64 b,
}

service Calc {
  void ping(),
  i64 add(1: i64 a, 2: i64 b),
  string echo(1: string s),
  i64 addPair(1: Pair p),
  i32 fail(1: i32 code) throws (1: CalcError err),
  oneway void fire(1: string s),
}

service Greeter {
  string greet(1: string name),
}
