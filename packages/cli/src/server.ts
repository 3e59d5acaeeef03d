import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export interface ProbeHandlers {
  healthz(): { ok: boolean; body: Record<string, unknown> };
  readyz(): { ok: boolean; body: Record<string, unknown> };
  metrics(): Promise<{ contentType: string; body: string }>;
}

/** GET /healthz, /readyz (JSON, 200 or 503) and /metrics (Prometheus text format) on node:http. */
export class ProbeServer {
  readonly #server: Server;
  readonly #handlers: ProbeHandlers;

  constructor(handlers: ProbeHandlers) {
    this.#handlers = handlers;
    this.#server = createServer((request, response) => {
      this.#handle(request, response).catch((error: unknown) => {
        if (!response.headersSent) response.writeHead(500, { "content-type": "text/plain; charset=utf-8" });
        response.end(`internal error: ${error instanceof Error ? error.name : "unknown"}\n`);
      });
    });
    // Probes are short; do not let idle keep-alive sockets delay shutdown.
    this.#server.keepAliveTimeout = 1_000;
  }

  listen(port: number, host: string): Promise<AddressInfo> {
    return new Promise((resolve, reject) => {
      const onError = (error: Error) => reject(error);
      this.#server.once("error", onError);
      this.#server.listen(port, host, () => {
        this.#server.off("error", onError);
        resolve(this.#server.address() as AddressInfo);
      });
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }

  async #handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = new URL(request.url ?? "/", "http://localhost").pathname;
    if (request.method !== "GET" && request.method !== "HEAD") {
      response.writeHead(405, { allow: "GET, HEAD", "content-type": "text/plain; charset=utf-8" });
      response.end("method not allowed\n");
      return;
    }
    if (path === "/healthz" || path === "/readyz") {
      const { ok, body } = path === "/healthz" ? this.#handlers.healthz() : this.#handlers.readyz();
      const text = `${JSON.stringify(body, (_key, value) => (typeof value === "bigint" ? value.toString() : value))}\n`;
      response.writeHead(ok ? 200 : 503, {
        "content-type": "application/json; charset=utf-8",
        "cache-control": "no-store",
      });
      response.end(request.method === "HEAD" ? undefined : text);
      return;
    }
    if (path === "/metrics") {
      const { contentType, body } = await this.#handlers.metrics();
      response.writeHead(200, { "content-type": contentType, "cache-control": "no-store" });
      response.end(request.method === "HEAD" ? undefined : body);
      return;
    }
    response.writeHead(404, { "content-type": "text/plain; charset=utf-8" });
    response.end("not found: try /healthz, /readyz or /metrics\n");
  }
}
