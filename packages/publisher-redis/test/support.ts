import type { ReceivedMessage } from "@outbox/conformance";
import type { Redis } from "ioredis";
import { decodeStreamFields } from "../src/index.js";

type StreamReply = Array<[Buffer, Array<[Buffer, Buffer[]]>]> | null;

/** Reads a stream from the start with XREAD BLOCK, as a real consumer would. */
export async function readStream(
  reader: Redis,
  stream: string,
  count: number,
  timeoutMs: number,
): Promise<ReceivedMessage[]> {
  const received: ReceivedMessage[] = [];
  let lastId = "0-0";
  const deadline = Date.now() + timeoutMs;
  while (received.length < count) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) break;
    const reply = (await reader.xreadBuffer(
      "COUNT",
      1_000,
      "BLOCK",
      Math.max(1, Math.min(remaining, 500)),
      "STREAMS",
      stream,
      lastId,
    )) as StreamReply;
    for (const [, entries] of reply ?? []) {
      for (const [id, fields] of entries) {
        lastId = id.toString();
        received.push(decodeStreamFields(fields));
      }
    }
  }
  return received;
}
