'use strict';
// A Dubbo provider that registers itself in ZooKeeper, as a Dubbo provider does: sofa-rpc-node's
// RpcServer with the dubbo-remoting protocol and sofa-rpc-node's ZookeeperRegistry rooted at
// ROOT, which creates the EPHEMERAL node ROOT/<interface>/providers/<URL-encoded dubbo:// URL>
// (persistent parents) and creates it again whenever its ZooKeeper client (re)connects.
//
// Usage: node sofa_zk_provider.js ZK_HOSTS ROOT INTERFACE VERSION [LINGER_MS]
// Needs NODE_PATH=tests/peers/node/node_modules. Prints "READY <port>" once registered.
// Answers name who served: echo(x) -> "<VERSION>@<port>:<x>", sayHello(n) -> "<VERSION>@<port>:Hello <n>".
// The URL carries aeraki_meta_app_version=<VERSION> (the application's version, which becomes
// the endpoint's `version` label); the Dubbo service version stays 0.0.0.
// On SIGTERM it shuts down as a Dubbo provider does: unregister first (prints "UNREGISTERED"),
// keep serving for LINGER_MS (default 2000) so consumers can move away, then close and exit.
const net = require('net');
// RpcServer has no host option: pin every listen() to loopback.
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (port, ...rest) {
  return typeof port === 'number' ? listen.call(this, port, '127.0.0.1', ...rest) : listen.call(this, port, ...rest);
};
const { RpcServer } = require('sofa-rpc-node').server;
const { ZookeeperRegistry } = require('sofa-rpc-node').registry;
const protocol = require('dubbo-remoting');

const [zkHosts, root, iface, version, lingerArg] = process.argv.slice(2);
const linger = Number(lingerArg || 2000);
const logger = { info() {}, warn() {}, error: console.error, debug() {} };
const registry = new ZookeeperRegistry({ logger, address: zkHosts + root });
registry.on('error', err => console.error('registry:', err.message));
const server = new RpcServer({
  logger, protocol, registry, port: 0, codecType: 'hessian2',
  appName: 'demo-' + version, publishAddress: '127.0.0.1',
});
server.on('error', err => console.error('server:', err.message));
const who = () => version + '@' + server.publishPort;
server.addService(
  { interfaceName: iface, version: '0.0.0', group: '', customMeta: { aeraki_meta_app_version: version } },
  {
    async echo(x) { return who() + ':' + x; },
    async sayHello(name) { return who() + ':Hello ' + name; },
  },
);

let stopping = false;
process.on('SIGTERM', async () => {
  if (stopping) return;
  stopping = true;
  await server.unPublish();
  console.log('UNREGISTERED');
  setTimeout(async () => {
    await server.close();
    await registry.close();
    process.exit(0);
  }, linger);
});

(async () => {
  await server.start();
  await server.publish();
  console.log('READY ' + server.publishPort);
})().catch(err => { console.error(err); process.exit(1); });
