import { createServer, type Server, Socket } from "node:net";

/**
 * A TCP proxy on a free loopback port in front of one server (etcd, the Pub/Sub fake, a
 * MongoDB-wire server...), to cut clients off without touching the server:
 * - `drop()`: resets every live connection; new ones are let through at once (a killed
 *   connection, as after `KILL CONNECTION` or a load balancer reset);
 * - `cut()`: resets every live connection and refuses new ones until `restore()`;
 * - `blackhole()`: keeps connections open but forwards nothing either way (a partition), and
 *   holds new ones the same way, until `restore()`, which resets them (as after a real partition).
 *
 * With `resetGapMs` (a `start` option), the resets of `drop()`, `cut()` and `restore()` go one
 * connection at a time, that many ms apart, in the background (the calls still return at once):
 * how a server or a middlebox usually kills connections. The mongodb driver, for one, wedges when
 * every connection of a client is reset in the same instant (see store-mongodb's README).
 */
export class TcpProxy {
  readonly #server: Server;
  readonly #pairs = new Set<[Socket, Socket]>();
  /** Connections that sent a chunk `tags` matched (see `start`). */
  readonly #tagged = new WeakSet<[Socket, Socket]>();
  readonly #tags: ((chunk: Buffer) => boolean) | undefined;
  #refusing = false;
  #holding = false;
  #dropOnSend: ((chunk: Buffer) => boolean) | null = null;
  #muteOnSend: ((chunk: Buffer) => boolean) | null = null;
  /** Connections whose server side `muteOnNextSend` silenced, until `unmute()`. */
  readonly #muted = new Set<[Socket, Socket]>();
  readonly #resetGapMs: number;
  readonly targetHost: string;
  readonly targetPort: number;
  port = 0;

  private constructor(
    targetHost: string,
    targetPort: number,
    resetGapMs: number,
    tags: ((chunk: Buffer) => boolean) | undefined,
  ) {
    this.targetHost = targetHost;
    this.targetPort = targetPort;
    this.#resetGapMs = resetGapMs;
    this.#tags = tags;
    this.#server = createServer((inbound) => this.#accept(inbound));
  }

  /**
   * Starts a proxy to `target` (`host:port`). `tags`: a connection whose client ever sent a chunk
   * it matches is tagged, so `dropEach({ tagged })` can reset one kind of connection before the
   * other (a client's busy connections before its idle monitor, say).
   */
  static async start(
    target: string,
    options: { resetGapMs?: number; tags?: (chunk: Buffer) => boolean } = {},
  ): Promise<TcpProxy> {
    const colon = target.lastIndexOf(":");
    const port = Number(target.slice(colon + 1));
    if (colon <= 0 || !Number.isInteger(port) || port <= 0)
      throw new Error(`TcpProxy target must be host:port, got ${target}`);
    const proxy = new TcpProxy(target.slice(0, colon), port, options.resetGapMs ?? 0, options.tags);
    await new Promise<void>((resolve) => proxy.#server.listen(0, "127.0.0.1", resolve));
    const address = proxy.#server.address();
    proxy.port = typeof address === "object" && address ? address.port : 0;
    return proxy;
  }

  /** `127.0.0.1:<port>`: where clients connect instead of the target. */
  get endpoint(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** How many connections are open through the proxy. */
  get connections(): number {
    return this.#pairs.size;
  }

  /** Resets every live connection and lets new ones through. Returns how many were reset. */
  drop(): number {
    const live = [...this.#pairs];
    this.#pairs.clear();
    for (const [i, [inbound, outbound]] of live.entries()) {
      const reset = () => {
        inbound.destroy();
        outbound.destroy();
      };
      if (this.#resetGapMs > 0 && i > 0) setTimeout(reset, i * this.#resetGapMs);
      else reset();
    }
    return live.length;
  }

  /**
   * Resets the live connections one at a time, oldest first, `gapMs` apart (new ones are let
   * through). Returns how many were reset. Unlike `drop()`, the client sees each reset on its own
   * turn of the event loop, as when a server or a middlebox kills connections one by one.
   * `tagged`: only the connections `tags` tagged (true) or only the others (false).
   */
  async dropEach(options: { gapMs?: number; tagged?: boolean } = {}): Promise<number> {
    const { gapMs = 5, tagged } = options;
    const live = [...this.#pairs].filter((pair) => tagged === undefined || this.#tagged.has(pair) === tagged);
    for (const [i, [inbound, outbound]] of live.entries()) {
      if (i > 0) await new Promise((resolve) => setTimeout(resolve, gapMs));
      inbound.destroy();
      outbound.destroy();
    }
    return live.length;
  }

  /**
   * Arms a failure in the middle of a request: the next chunk a client sends that `matches` (default:
   * any) is not forwarded, and every live connection is reset at that moment (as `drop()`). The
   * client sees its request fail after it left the client, before the server answered. New
   * connections are let through. `times` (default 1): that many matching sends fail so, one after
   * the other (to outlast a client's own retries of the request).
   */
  dropOnNextSend(matches: (chunk: Buffer) => boolean = () => true, times = 1): void {
    let left = times;
    this.#dropOnSend = (chunk) => {
      if (!matches(chunk)) return false;
      left -= 1;
      if (left <= 0) this.#dropOnSend = null;
      return true;
    };
  }

  /**
   * Arms a silent server: the next chunk a client sends that `matches` (default: any) is forwarded,
   * but from then on nothing the server sends on that connection reaches the client (a broker that
   * hangs: the connection stays open, the answer never comes), until `unmute()` lets what the server
   * sent meanwhile through, late, or the connection is reset (`drop()`, `cut()`). Resolves once that
   * chunk went through. Other connections are not affected.
   */
  muteOnNextSend(matches: (chunk: Buffer) => boolean = () => true): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#muteOnSend = (chunk) => {
        if (!matches(chunk)) return false;
        this.#muteOnSend = null;
        resolve();
        return true;
      };
    });
  }

  /** Ends `muteOnNextSend`: what the server sent meanwhile reaches the client now. */
  unmute(): void {
    this.#muteOnSend = null;
    for (const [inbound, outbound] of this.#muted) {
      if (outbound.destroyed || inbound.destroyed) continue;
      outbound.pipe(inbound);
      outbound.resume();
    }
    this.#muted.clear();
  }

  /** Resets every live connection and refuses new ones until `restore()`. Returns how many were reset. */
  cut(): number {
    this.#refusing = true;
    return this.drop();
  }

  /** Forwards nothing either way, on live and new connections, until `restore()`. */
  blackhole(): void {
    this.#holding = true;
    for (const [inbound, outbound] of this.#pairs) {
      inbound.unpipe(outbound);
      outbound.unpipe(inbound);
      inbound.pause();
      outbound.pause();
    }
  }

  /** Lets traffic through again; blackholed connections are reset (as after a real partition). */
  restore(): void {
    if (this.#holding) this.drop();
    this.#refusing = false;
    this.#holding = false;
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #accept(inbound: Socket): void {
    if (this.#refusing) {
      inbound.destroy();
      return;
    }
    if (this.#holding) {
      inbound.on("error", () => {}); // a held client that gives up resets its socket
      inbound.pause();
      this.#pairs.add([inbound, new Socket()]);
      return;
    }
    const outbound = new Socket();
    const pair: [Socket, Socket] = [inbound, outbound];
    this.#pairs.add(pair);
    const drop = () => {
      inbound.destroy();
      outbound.destroy();
      this.#pairs.delete(pair);
    };
    inbound.on("error", drop).on("close", drop);
    outbound.on("error", drop).on("close", drop);
    outbound.connect(this.targetPort, this.targetHost, () => {
      // Registered before the pipe, so it sees each chunk before the pipe forwards it.
      inbound.on("data", (chunk: Buffer) => {
        if (this.#tags?.(chunk)) this.#tagged.add(pair);
        if (this.#dropOnSend?.(chunk)) this.drop();
        if (this.#muteOnSend?.(chunk)) {
          outbound.unpipe(inbound);
          outbound.pause();
          this.#muted.add(pair);
        }
      });
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    });
  }
}
