// Helpers of scripts/check-outside.sh for the Quick starts, run inside the outside project (its node_modules: the
// drivers the Quick starts' install lines name). Settings from scripts/services.env (OUTBOX_*).
//   node quick-start-verify.mjs create <postgres|mysql|mongodb> <name>   a fresh database; prints its URL
//   node quick-start-verify.mjs drop <postgres|mysql|mongodb> <name>
//   node quick-start-verify.mjs read <kafka|rabbitmq|pubsub|redis|memory> <target> <output file>
//     finds the order id in the Quick start's output ("order <uuid> published ...") and reads the broker until it
//     holds a message with that id: the topic (Kafka), queue (RabbitMQ), subscription (Pub/Sub) or stream (Redis).
import { readFileSync } from "node:fs";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (source scripts/services.env)`);
  return value;
};
const withDatabase = (url, name) => {
  const parsed = new URL(url);
  parsed.pathname = `/${name}`;
  return parsed.toString();
};
const [action, kind, target, output] = process.argv.slice(2);
const deadline = Date.now() + 20_000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function database() {
  const name = target;
  if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`bad database name ${name}`);
  if (kind === "postgres") {
    const { default: pg } = await import("pg");
    const client = new pg.Client({ connectionString: env("OUTBOX_PG_URL") });
    await client.connect();
    await client.query(
      action === "create" ? `CREATE DATABASE "${name}"` : `DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`,
    );
    await client.end();
    if (action === "create") console.log(withDatabase(env("OUTBOX_PG_URL"), name));
  } else if (kind === "mysql") {
    const { default: mysql } = await import("mysql2/promise");
    const connection = await mysql.createConnection(env("OUTBOX_MYSQL_URL"));
    await connection.query(action === "create" ? `CREATE DATABASE \`${name}\`` : `DROP DATABASE IF EXISTS \`${name}\``);
    await connection.end();
    if (action === "create") console.log(withDatabase(env("OUTBOX_MYSQL_URL"), name));
  } else if (kind === "mongodb") {
    // Created by its first write; dropped here.
    if (action === "create") console.log(withDatabase(env("OUTBOX_MONGODB_URL"), name));
    else {
      const { MongoClient } = await import("mongodb");
      const client = new MongoClient(env("OUTBOX_MONGODB_URL"), { serverSelectionTimeoutMS: 5_000 });
      await client.db(name).dropDatabase();
      await client.close();
    }
  } else if (kind !== "none") throw new Error(`unknown database ${kind}`);
}

/** True once the message with `id` in its payload was read from the broker. */
async function read(id) {
  const has = (payload) =>
    Buffer.from(payload ?? "")
      .toString("utf8")
      .includes(id);
  if (kind === "memory") return true; // the in-memory demo printed what MemoryPublisher holds
  if (kind === "kafka") {
    const { Kafka, logLevel } = await import("kafkajs");
    const kafka = new Kafka({
      clientId: "quick-start-verify",
      brokers: env("OUTBOX_KAFKA_BROKERS").split(","),
      logLevel: logLevel.NOTHING,
    });
    const consumer = kafka.consumer({ groupId: `quick-start-verify-${process.pid}-${Date.now()}` });
    await consumer.connect();
    await consumer.subscribe({ topic: target, fromBeginning: true });
    let found = false;
    await consumer.run({
      eachMessage: async ({ message }) => {
        if (has(message.value)) found = true;
      },
    });
    while (!found && Date.now() < deadline) await sleep(100);
    await consumer.disconnect();
    return found;
  }
  if (kind === "rabbitmq") {
    const { default: amqplib } = await import("amqplib");
    const connection = await amqplib.connect(env("OUTBOX_AMQP_URL"));
    const channel = await connection.createChannel();
    let found = false;
    while (!found && Date.now() < deadline) {
      const message = await channel.get(target, { noAck: false });
      if (!message) {
        await sleep(100);
        continue;
      }
      found = has(message.content);
      channel.ack(message); // earlier runs' messages are read and dropped on the way
    }
    await connection.close();
    return found;
  }
  if (kind === "pubsub") {
    const { PubSub, v1 } = await import("@google-cloud/pubsub");
    const projectId = process.env.PUBSUB_PROJECT_ID ?? "outbox-quickstart";
    // The client options as the Quick start makes them (emulator, no credentials), for the generated client.
    const { options } = new PubSub({
      projectId,
      apiEndpoint: env("OUTBOX_PUBSUB_EMULATOR_HOST"),
      emulatorMode: true,
      universeDomain: "googleapis.com",
    });
    const subscriber = new v1.SubscriberClient(options);
    const subscription = `projects/${projectId}/subscriptions/${target}`;
    let found = false;
    while (!found && Date.now() < deadline) {
      const [response] = await subscriber.pull({ subscription, maxMessages: 100 }, { timeout: 5_000 });
      const received = response.receivedMessages ?? [];
      found = received.some((item) => has(item.message?.data));
      const ackIds = received.map((item) => item.ackId).filter(Boolean);
      if (ackIds.length > 0) await subscriber.acknowledge({ subscription, ackIds });
      if (received.length === 0) await sleep(100);
    }
    await subscriber.close();
    return found;
  }
  if (kind === "redis") {
    const { Redis } = await import("ioredis");
    const redis = new Redis(env("OUTBOX_REDIS_URL"));
    let found = false;
    while (!found && Date.now() < deadline) {
      const entries = await redis.xrevrangeBuffer(target, "+", "-", "COUNT", 100);
      found = entries.some(([, fields]) => fields.some((field) => has(field)));
      if (!found) await sleep(100);
    }
    await redis.quit();
    return found;
  }
  throw new Error(`unknown broker ${kind}`);
}

try {
  if (action === "create" || action === "drop") await database();
  else if (action === "read") {
    const text = readFileSync(output, "utf8");
    const id = /^order ([0-9a-f-]{36}) published/m.exec(text)?.[1];
    if (!id) throw new Error(`the Quick start printed no "order <id> published" line:\n${text}`);
    if (!(await read(id))) throw new Error(`order ${id}: no message with it in ${kind} ${target} within 20 s`);
    console.log(
      kind === "memory" ? `order ${id}: in MemoryPublisher` : `order ${id}: read back from ${kind} ${target}`,
    );
  } else throw new Error(`usage: node quick-start-verify.mjs create|drop|read ...`);
} catch (error) {
  console.error(error);
  process.exit(1);
}
