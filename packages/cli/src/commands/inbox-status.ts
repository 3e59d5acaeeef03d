import type { InboxConsumerStats, InboxStore } from "@outbox/inbox";
import { type CliIO, formatAge, writeJson, writeTable } from "../io.js";

export interface InboxStatusReport {
  readonly consumers: InboxConsumerStats[];
}

/**
 * `outbox inbox status`: per consumer, the processed keys (the duplicate window), dead letters and failing messages,
 * the oldest and newest key and the oldest dead letter; one consumer with `consumer`, else every consumer.
 */
export async function inboxStatus(
  store: InboxStore<unknown>,
  options: { consumer: string | undefined; json: boolean },
  io: CliIO,
): Promise<InboxStatusReport> {
  const report: InboxStatusReport = { consumers: await store.stats(options.consumer) };
  if (options.json) {
    writeJson(io.stdout, report);
    return report;
  }
  if (report.consumers.length === 0) {
    io.stdout.write("no consumer has recorded anything in this inbox yet\n");
    return report;
  }
  const now = io.now();
  const ago = (at: Date | null) => (at === null ? "-" : `${formatAge(now - at.getTime())} ago`);
  writeTable(
    io.stdout,
    ["CONSUMER", "PROCESSED", "DEAD", "FAILING", "OLDEST KEY", "NEWEST KEY", "OLDEST DEAD"],
    report.consumers.map((stats) => [
      stats.consumer,
      String(stats.processed),
      String(stats.dead),
      String(stats.failing),
      ago(stats.oldestProcessedAt),
      ago(stats.newestProcessedAt),
      ago(stats.oldestDeadAt),
    ]),
  );
  const [only] = report.consumers;
  if (options.consumer !== undefined && only && only.processed + only.dead + only.failing === 0) {
    // A typo in the name looks the same as an idle consumer: say which names exist.
    io.stdout.write(
      `\nnothing recorded for consumer ${JSON.stringify(options.consumer)}: \`outbox inbox status\` lists the consumers that recorded something\n`,
    );
  }
  return report;
}
