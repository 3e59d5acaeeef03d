export {
  type AmqpFailureType,
  classifyConfirmError,
  classifyOpenError,
  isPermanent,
  replyCode,
  replyName,
} from "./classify.js";
export {
  AmqpHeader,
  type AmqpMessage,
  type ConsumedMessageLike,
  type DecodedMessage,
  decodeMessage,
  type EncodingProblem,
  encodeMessage,
  headerTableBytes,
} from "./message.js";
export {
  type AmqpConnectOptions,
  createRabbitMqPublisher,
  type RabbitMqPublisher,
  type RabbitMqPublisherOptions,
} from "./publisher.js";
export type {
  AmqpConfirmChannelLike,
  AmqpConnectionLike,
  AmqpPublishOptions,
  AmqpReturnedMessage,
  AmqpReturnFields,
} from "./types.js";
export { planWaves } from "./waves.js";
