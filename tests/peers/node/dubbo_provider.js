'use strict';
// A sofa-rpc-node + dubbo-remoting Dubbo provider on 127.0.0.1 for metamesh's Dubbo codec tests.
// Usage: node dubbo_provider.js [port]   (0 or nothing = ephemeral). Prints "READY <port>".
// Service org.apache.dubbo.demo.DemoService 0.0.0: sayHello, add, echo, fail (throws "boom"),
// getAttachment(key): the request attachment (dubbo-remoting "requestProps") as received.
const net = require('net');
// RpcServer has no host option: pin every listen() to loopback.
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  return typeof port === 'number' ? listen.call(this, port, '127.0.0.1', ...rest) : listen.call(this, port, ...rest);
};
const { RpcServer } = require('sofa-rpc-node').server;
const protocol = require('dubbo-remoting');
const java = require('js-to-java');

const logger = { info() {}, warn() {}, error: console.error, debug() {} };

class Server extends RpcServer {
  createContext(req) { return { req }; } // handlers see the request as `this.req`
}

const server = new Server({ logger, protocol, port: Number(process.argv[2] || 0), codecType: 'hessian2' });
server.addService({ interfaceName: 'org.apache.dubbo.demo.DemoService', version: '0.0.0' }, {
  async sayHello(name) { return 'Hello ' + name; },
  async add(a, b) { return java.long(Number(a) + Number(b)); },
  async echo(x) { return x; },
  async fail() { throw new Error('boom'); },
  async getAttachment(key) {
    const value = this.req.data.requestProps[key];
    return value === undefined ? null : String(value);
  },
});
server.start().then(() => {
  console.log('READY ' + server.publishPort);
});
