// The demo's Thrift service. The servers implement it by hand on Apache thrift's TProcessor
// API and the client loads this file at run time with thriftpy2: no code is generated.
service Hello {
  string sayHello(1: string name)
  string echo(1: string text)
}
