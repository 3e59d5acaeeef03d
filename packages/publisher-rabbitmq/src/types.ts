/**
 * The slice of the amqplib promise API the publisher uses, declared structurally so that
 * amqplib's own `ChannelModel`/`ConfirmChannel` (0.10.x with @types/amqplib, 1.x, 2.x with
 * bundled types) all fit.
 */

/** AMQP basic properties the publisher sets (amqplib `Options.Publish`). */
export interface AmqpPublishOptions {
  mandatory?: boolean;
  persistent?: boolean;
  messageId?: string;
  contentType?: string;
  contentEncoding?: string;
  timestamp?: number;
  headers?: Record<string, string>;
}

/** The fields of a `basic.return` (amqplib's `message.fields` on a "return" event). */
export interface AmqpReturnFields {
  readonly replyCode: number;
  readonly replyText: string;
  readonly exchange: string;
  readonly routingKey: string;
}

/** A returned message as amqplib emits it on the channel's "return" event. */
export interface AmqpReturnedMessage {
  readonly fields: AmqpReturnFields;
  readonly properties: { readonly messageId?: unknown; readonly headers?: Readonly<Record<string, unknown>> };
  readonly content: Uint8Array;
}

/** Node's EventEmitter, as amqplib's objects are. */
interface Emitter {
  // biome-ignore lint/suspicious/noExplicitAny: EventEmitter's own listener type
  on(event: string, listener: (...args: any[]) => void): unknown;
  // biome-ignore lint/suspicious/noExplicitAny: EventEmitter's own listener type
  removeListener(event: string, listener: (...args: any[]) => void): unknown;
}

/** amqplib's `ConfirmChannel`. */
export interface AmqpConfirmChannelLike extends Emitter {
  publish(
    exchange: string,
    routingKey: string,
    content: Buffer,
    options: AmqpPublishOptions,
    // amqplib's declared callback type is `(err: any, ok: Replies.Empty) => void`.
    // biome-ignore lint/suspicious/noExplicitAny: matches amqplib's own declaration
    callback: (err: any) => void,
  ): boolean;
  checkExchange(exchange: string): Promise<unknown>;
  close(): Promise<void>;
}

/** amqplib's `ChannelModel` (what `amqplib.connect()` resolves to). */
export interface AmqpConnectionLike extends Emitter {
  createConfirmChannel(): Promise<AmqpConfirmChannelLike>;
  close(): Promise<void>;
  /** amqplib's underlying `Connection`; its negotiated `frameMax` bounds the message properties. */
  readonly connection?: unknown;
}
