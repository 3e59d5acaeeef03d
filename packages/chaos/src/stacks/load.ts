// Loads a stack's module on demand: a run of one stack never loads the drivers of the others.
import { type Stack, stackIds } from "../stack.js";

export async function loadStack(id: string): Promise<Stack> {
  switch (id) {
    case "pg-kafka":
      return (await import("./pg-kafka.js")).stack;
    case "mysql-rabbitmq":
      return (await import("./mysql-rabbitmq.js")).stack;
    case "mongo-pubsub":
    case "ferretdb-pubsub":
      return (await import("./mongo-pubsub.js")).mongoPubSubStack(id);
    default:
      throw new Error(`unknown stack ${id} (known: ${stackIds.join(", ")})`);
  }
}
