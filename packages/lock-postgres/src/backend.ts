import {
  checkLockCall,
  describeError,
  type LockBackend,
  type LockBackendCapabilities,
  OutboxError,
  OutboxErrorCode,
} from "@outbox/core";

/**
 * A dedicated PostgreSQL session: a connected pg `Client` fits. Structural, so this package has
 * no runtime dependency on pg; the backend ends it on close or when it breaks.
 */
export interface LockSession {
  query(text: string, params?: unknown[]): Promise<{ rows: unknown[] }>;
  on(event: "error", listener: (error: Error) => void): unknown;
  on(event: "end", listener: () => void): unknown;
  end(): Promise<void>;
}

/** pg's `Client` class, as far as the backend needs it (for the `connectionString` option). */
export type LockClientClass = new (config: {
  connectionString: string;
  application_name?: string;
  keepAlive?: boolean;
  query_timeout?: number;
  connectionTimeoutMillis?: number;
}) => LockSession & { connect(): Promise<unknown> };

export interface PostgresLockBackendOptions {
  /**
   * Opens the dedicated session (a connected pg `Client`), called again after the session is
   * lost. Or give `connectionString` and the backend opens it with pg.
   */
  connect?: () => Promise<LockSession>;
  connectionString?: string;
  /** pg's `Client` class for `connectionString`. Default: the one of the installed "pg". */
  Client?: LockClientClass;
  /** Table of fencing counters. Default "outbox_lock_tokens" in schema "public". */
  table?: string;
  schema?: string;
  /** Create the counter table if missing (idempotent) when a session opens. Default true. */
  createTable?: boolean;
  /** Client-side timeout of each statement with `connectionString`. Default 10 s. */
  queryTimeoutMs?: number;
}

const identifier = /^[A-Za-z_][A-Za-z0-9_]*$/;

function checkIdentifier(value: string, what: string): string {
  if (!identifier.test(value) || value.length > 63) {
    throw new OutboxError(
      OutboxErrorCode.InvalidOptions,
      `${what} must match ${identifier} and be at most 63 characters, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

interface Session {
  readonly client: LockSession;
  alive: boolean;
  /** Lock name -> holder, for the advisory locks this session holds. */
  readonly holdings: Map<string, string>;
}

/** The advisory lock key of a name, computed by the server (stable across versions and hosts). */
const keyOf = "hashtextextended($1::text, 0)";

/**
 * Leader election on PostgreSQL advisory locks, with durable fencing tokens.
 *
 * - One dedicated session per backend instance holds the session-level advisory locks, so a
 *   crashed process, a killed backend or a server restart frees them at once.
 * - `tryAcquire` takes `pg_try_advisory_lock` and increments the name's counter row in the same
 *   statement (committed durably, `synchronous_commit = on`): tokens strictly increase across
 *   holders, sessions and server restarts.
 * - `renew` checks that the session is alive and still holds the lock (pg_locks); the lock does
 *   not expire while the session lives (`sessionBound`), so the TTL only paces these checks.
 * - Several holders may share one backend: the holder of each name is tracked, and another
 *   holder name on the same backend is refused like a different process would be.
 */
export class PostgresLockBackend implements LockBackend {
  readonly capabilities: LockBackendCapabilities = { tokensSurviveRestart: true, sessionBound: true };
  readonly #connect: () => Promise<LockSession>;
  readonly #table: string;
  readonly #createTable: boolean;
  #session: Session | null = null;
  #opening: Promise<Session> | null = null;
  /** Names with an acquisition in flight on this backend: treated as held. */
  readonly #acquiring = new Set<string>();
  #closed = false;
  readonly #sql: ReturnType<typeof statements>;

  constructor(options: PostgresLockBackendOptions) {
    const schema = checkIdentifier(options.schema ?? "public", "schema");
    const table = checkIdentifier(options.table ?? "outbox_lock_tokens", "table");
    this.#table = `"${schema}"."${table}"`;
    this.#createTable = options.createTable ?? true;
    this.#sql = statements(this.#table);
    if (options.connect) {
      this.#connect = options.connect;
    } else if (options.connectionString) {
      const { connectionString } = options;
      const queryTimeout = options.queryTimeoutMs ?? 10_000;
      this.#connect = async () => {
        const Client = options.Client ?? (await loadPgClient());
        const client = new Client({
          connectionString,
          application_name: "outbox-lock",
          keepAlive: true,
          query_timeout: queryTimeout,
          connectionTimeoutMillis: queryTimeout,
        });
        client.on("error", () => undefined);
        await client.connect();
        return client;
      };
    } else {
      throw new OutboxError(
        OutboxErrorCode.InvalidOptions,
        "createPostgresLockBackend needs `connect` or `connectionString`",
      );
    }
  }

  /** Whether the dedicated session is currently open (diagnostics). */
  get connected(): boolean {
    return this.#session?.alive ?? false;
  }

  /** The server pid of the dedicated session, or null (diagnostics and tests). */
  async backendPid(): Promise<number | null> {
    const session = this.#session;
    if (!session?.alive) return null;
    const { rows } = await session.client.query("SELECT pg_backend_pid() AS pid");
    return Number((rows[0] as { pid: unknown }).pid);
  }

  async tryAcquire(name: string, holder: string, ttlMs: number): Promise<bigint | null> {
    this.#assertOpen();
    checkLockCall(name, holder, ttlMs);
    if (this.#acquiring.has(name)) return null;
    const current = this.#session?.alive ? this.#session.holdings.get(name) : undefined;
    if (current !== undefined && current !== holder) return null;
    this.#acquiring.add(name);
    try {
      const session = await this.#open();
      if (session.holdings.get(name) === holder) {
        // Re-acquiring our own lock (the caller's validity lapsed): still held? New token.
        const token = await this.#query(session, "tryAcquire", this.#sql.reacquire, [name]);
        const row = token[0] as { held: boolean; token: string | null };
        if (row.held && row.token !== null) return BigInt(row.token);
        session.holdings.delete(name);
      }
      let rows: unknown[];
      try {
        rows = await this.#query(session, "tryAcquire", this.#sql.acquire, [name]);
      } catch (error) {
        // A session-level advisory lock survives the failed statement that took it.
        if (session.alive) await session.client.query(this.#sql.unlock, [name]).catch(() => undefined);
        throw error;
      }
      const row = rows[0] as { got: boolean; token: string | null };
      if (!row.got) return null;
      if (row.token === null) throw new OutboxError(OutboxErrorCode.LockUnavailable, "no fencing token returned");
      if (!session.alive) return null;
      session.holdings.set(name, holder);
      return BigInt(row.token);
    } finally {
      this.#acquiring.delete(name);
    }
  }

  async renew(name: string, holder: string, ttlMs: number): Promise<boolean> {
    this.#assertOpen();
    checkLockCall(name, holder, ttlMs);
    const session = this.#session;
    if (!session?.alive || session.holdings.get(name) !== holder) return false;
    let rows: unknown[];
    try {
      rows = await this.#query(session, "renew", this.#sql.held, [name]);
    } catch (error) {
      // A dead session has lost its locks for sure: report the loss now, not after the TTL.
      if (!session.alive) return false;
      throw error;
    }
    const held = (rows[0] as { held: boolean }).held === true;
    if (!held) session.holdings.delete(name);
    return held;
  }

  async release(name: string, holder: string): Promise<boolean> {
    this.#assertOpen();
    checkLockCall(name, holder);
    const session = this.#session;
    if (!session?.alive || session.holdings.get(name) !== holder) return false;
    session.holdings.delete(name);
    try {
      const rows = await this.#query(session, "release", this.#sql.unlock, [name]);
      return (rows[0] as { released: boolean }).released === true;
    } catch (error) {
      if (!session.alive) return false;
      throw error;
    }
  }

  /** Ends the dedicated session, which releases every lock it holds. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const opening = this.#opening;
    const session = this.#session ?? (opening ? await opening.catch(() => null) : null);
    this.#session = null;
    if (session) {
      session.alive = false;
      session.holdings.clear();
      await session.client.end().catch(() => undefined);
    }
  }

  async #open(): Promise<Session> {
    if (this.#session?.alive) return this.#session;
    this.#opening ??= this.#openSession().finally(() => {
      this.#opening = null;
    });
    return this.#opening;
  }

  async #openSession(): Promise<Session> {
    let client: LockSession;
    try {
      client = await this.#connect();
    } catch (cause) {
      throw new OutboxError(OutboxErrorCode.LockUnavailable, `cannot open the lock session: ${describeError(cause)}`, {
        cause,
      });
    }
    const session: Session = { client, alive: true, holdings: new Map() };
    const lost = () => {
      // Every advisory lock of the session is gone with it.
      session.alive = false;
      session.holdings.clear();
      if (this.#session === session) this.#session = null;
      client.end().catch(() => undefined);
    };
    client.on("error", lost);
    client.on("end", lost);
    try {
      if (this.#createTable) await client.query(this.#sql.createTable);
    } catch (cause) {
      lost();
      throw new OutboxError(OutboxErrorCode.LockUnavailable, "cannot create the lock token table", { cause });
    }
    if (this.#closed) {
      lost();
      throw new OutboxError(OutboxErrorCode.Closed, "the postgres lock backend is closed");
    }
    this.#session = session;
    return session;
  }

  async #query(session: Session, operation: string, text: string, params: unknown[]): Promise<unknown[]> {
    try {
      return (await session.client.query(text, params)).rows;
    } catch (cause) {
      throw new OutboxError(OutboxErrorCode.LockUnavailable, `${operation} failed: ${describeError(cause)}`, { cause });
    }
  }

  #assertOpen(): void {
    if (this.#closed) throw new OutboxError(OutboxErrorCode.Closed, "the postgres lock backend is closed");
  }
}

function statements(t: string) {
  const heldBy = `EXISTS (
    SELECT 1 FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.pid = pg_backend_pid() AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((${keyOf} >> 32) & 4294967295)::oid
      AND l.objid = (${keyOf} & 4294967295)::oid)`;
  return {
    // One implicit transaction (simple protocol); the advisory lock serialises concurrent
    // creators, since CREATE TABLE IF NOT EXISTS alone can race.
    createTable: `SELECT pg_advisory_xact_lock(hashtextextended('@outbox/lock-postgres:' || ${literal(t)}, 0));
      CREATE TABLE IF NOT EXISTS ${t} (lock_name text PRIMARY KEY, token bigint NOT NULL)`,
    // Lock and token in one statement; the token commits durably even where the server
    // defaults to synchronous_commit = off.
    acquire: `WITH l AS MATERIALIZED (SELECT pg_try_advisory_lock(${keyOf}) AS got),
      t AS (
        INSERT INTO ${t} AS t (lock_name, token) SELECT $1, 1 FROM l WHERE l.got
        ON CONFLICT (lock_name) DO UPDATE SET token = t.token + 1
        RETURNING t.token
      )
      SELECT (SELECT got FROM l) AS got, (SELECT token::text FROM t) AS token,
        set_config('synchronous_commit', 'on', true) AS durable`,
    reacquire: `WITH h AS MATERIALIZED (SELECT ${heldBy} AS held),
      t AS (UPDATE ${t} SET token = token + 1 WHERE lock_name = $1 AND (SELECT held FROM h) RETURNING token)
      SELECT (SELECT held FROM h) AS held, (SELECT token::text FROM t) AS token,
        set_config('synchronous_commit', 'on', true) AS durable`,
    held: `SELECT ${heldBy} AS held`,
    unlock: `SELECT pg_advisory_unlock(${keyOf}) AS released`,
  };
}

/** A SQL string literal of an already validated, quoted identifier (no single quotes inside). */
function literal(value: string): string {
  return `'${value}'`;
}

async function loadPgClient(): Promise<LockClientClass> {
  const pg = (await import("pg")) as unknown as { default: { Client: LockClientClass } };
  return pg.default.Client;
}

export function createPostgresLockBackend(options: PostgresLockBackendOptions): PostgresLockBackend {
  return new PostgresLockBackend(options);
}
