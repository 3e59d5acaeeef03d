export { decodeStreamFields, encodeStreamFields, StreamField, type StreamMessage } from "./fields.js";
export {
  classifyRedisError,
  createRedisStreamPublisher,
  type RedisStreamPublisher,
  type RedisStreamPublisherOptions,
} from "./publisher.js";
