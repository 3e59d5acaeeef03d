#!/usr/bin/env node
import { main } from "./cli.js";

const code = await main(process.argv.slice(2));
// Exit even if a client the config made (a pool, a socket) still holds the event loop, but only
// once stdout and stderr are flushed.
process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
