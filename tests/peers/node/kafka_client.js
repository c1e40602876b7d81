// kafkajs (a real Node Kafka client) through the mesh: produce messages to a topic, then
// consume them back in a consumer group, and print what was consumed as JSON.
// Usage: node kafka_client.js BOOTSTRAP TOPIC GROUP COUNT
'use strict';
const { Kafka, logLevel } = require('kafkajs');

async function main() {
  const [bootstrap, topic, group, count] = process.argv.slice(2);
  const kafka = new Kafka({
    clientId: 'kafkajs-peer', brokers: [bootstrap], logLevel: logLevel.ERROR,
    retry: { retries: 3 },
  });
  const producer = kafka.producer();
  await producer.connect();
  const messages = [];
  for (let i = 0; i < Number(count); i++) messages.push({ value: `js-${i}`, partition: 0 });
  await producer.send({ topic, messages });
  await producer.disconnect();
  // A short rebalance timeout: the broker holds the first JoinGroup for that long.
  const consumer = kafka.consumer({
    groupId: group, sessionTimeout: 6000, rebalanceTimeout: 2000, heartbeatInterval: 500,
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: true });
  const got = [];
  let timer;
  await new Promise((resolve) => {
    consumer.run({
      eachMessage: async ({ message }) => {
        got.push(message.value.toString());
        if (got.length >= Number(count)) resolve();
      },
    });
    timer = setTimeout(resolve, 30000);
  });
  clearTimeout(timer);
  await consumer.disconnect();
  console.log(JSON.stringify(got));
}

main().catch((e) => { console.error(e); process.exit(1); });
