import { createHash } from "node:crypto";

/**
 * The lock's value is "<token>:<holder>". Tokens are digits only, so the first ":" splits it.
 * KEYS[1] is the lock key, KEYS[2] the fencing counter; both carry the same `{name}` hash tag.
 */
const parseHolding = `
local function holding(value)
  if not value then return nil, nil end
  local sep = string.find(value, ':', 1, true)
  if not sep then return nil, nil end
  return string.sub(value, sep + 1), string.sub(value, 1, sep - 1)
end
`;

/**
 * Acquire (or re-acquire by the same holder) and hand out a fencing token, atomically.
 *
 * Token = max(counter + 1, server time in microseconds). The counter alone would restart at 1
 * when Redis loses its data (restart without persistence, failover to a lagging replica); the
 * time floor keeps tokens above every token issued before, as long as the Redis server's clock
 * does not step back across the restart. The counter is returned with GET, as text: Lua numbers
 * are doubles, and the integer reply path would lose precision past 2^53.
 */
export const acquireScript = `${parseHolding}
local current = redis.call('GET', KEYS[1])
if current and holding(current) ~= ARGV[1] then return false end
local now = redis.call('TIME')
local floor = now[1] .. string.format('%06d', tonumber(now[2]))
local last = redis.call('GET', KEYS[2])
if last and tonumber(last) >= tonumber(floor) then
  redis.call('INCR', KEYS[2])
else
  redis.call('SET', KEYS[2], floor)
end
local token = redis.call('GET', KEYS[2])
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
`;

/** Compare-and-extend: only the current holder moves the expiry. */
export const renewScript = `${parseHolding}
local holder = holding(redis.call('GET', KEYS[1]))
if holder ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

/**
 * Compare-and-delete: only the current holder, and, when ARGV[2] is not empty, only the grant
 * with that token (a release delayed in the network cannot delete the same holder's newer grant).
 */
export const releaseScript = `${parseHolding}
local holder, token = holding(redis.call('GET', KEYS[1]))
if holder ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' and token ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
`;

export interface LuaScript {
  readonly source: string;
  readonly sha: string;
}

export function script(source: string): LuaScript {
  return { source, sha: createHash("sha1").update(source).digest("hex") };
}
