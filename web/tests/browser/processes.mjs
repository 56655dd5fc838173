// Starts and stops im-logic and im-engine for the browser test, on loopback test ports, so the
// test can stop and restart the engine while pages are connected.

import { spawn } from "node:child_process";
import { createWriteStream, mkdirSync } from "node:fs";
import net from "node:net";
import path from "node:path";

/** Resolves once `addr` ("host:port") accepts a TCP connection, or rejects after `timeoutMs`. */
export async function waitForPort(addr, timeoutMs, child, name) {
  const [host, port] = splitAddr(addr);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child && child.exitCode !== null) {
      throw new Error(`${name} exited with status ${child.exitCode} before listening on ${addr}`);
    }
    if (await accepts(host, port)) {
      return;
    }
    await sleep(100);
  }
  throw new Error(`${name} did not listen on ${addr} within ${timeoutMs} ms`);
}

/** Resolves true when nothing listens on `addr`. */
export async function isFree(addr) {
  const [host, port] = splitAddr(addr);
  return !(await accepts(host, port));
}

function accepts(host, port) {
  return new Promise((resolve) => {
    const socket = net.connect({ host, port });
    socket.setTimeout(1_000);
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
    socket.once("timeout", () => {
      socket.destroy();
      resolve(false);
    });
  });
}

function splitAddr(addr) {
  const index = addr.lastIndexOf(":");
  return [addr.slice(0, index), Number(addr.slice(index + 1))];
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A child process whose output goes to `logFile`. */
export class Service {
  constructor(name, binary, env, runDir) {
    this.name = name;
    this.binary = binary;
    this.env = env;
    this.runDir = runDir;
    this.child = null;
    this.starts = 0;
  }

  get logFile() {
    return path.join(this.runDir, `${this.name}-${this.starts}.log`);
  }

  start() {
    mkdirSync(this.runDir, { recursive: true });
    this.starts += 1;
    const log = createWriteStream(this.logFile);
    const env = { ...process.env, ...this.env, NO_COLOR: "1" };
    // A configuration file meant for scripts/run must not change the test setup.
    delete env.IM_CONFIG;
    this.child = spawn(this.binary, [], { cwd: this.runDir, env, stdio: ["ignore", "pipe", "pipe"] });
    this.child.stdout.pipe(log);
    this.child.stderr.pipe(log);
    return this.child;
  }

  /** Sends SIGTERM and waits up to `timeoutMs` for the exit, then SIGKILL. */
  async stop(timeoutMs = 10_000) {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) {
      return;
    }
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    const result = await Promise.race([exited.then(() => "exited"), sleep(timeoutMs)]);
    if (result !== "exited") {
      child.kill("SIGKILL");
      await exited;
    }
    this.child = null;
  }
}
