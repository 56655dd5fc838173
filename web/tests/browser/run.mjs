// Browser test of the web client. Two users in two Chromium profiles register, become friends
// and chat. One page closes and comes back to find the messages it missed, in order. Then the
// engine is stopped and started again, and both pages reconnect by themselves without losing or
// doubling a message. A SEND to a hung engine ends failed and Retry stores it once, a bad chat
// address shows the not-found view, and a second tab of one user gets its own device.
//
// Uses Debian's Chromium (/usr/bin/chromium, or IM_CHROMIUM) through playwright-core, and starts
// target/debug (or IM_BIN_DIR) im-logic and im-engine against the PostgreSQL and Redis named by
// IM_LOGIC_DATABASE_URL and IM_LOGIC_REDIS_URL. Addresses: IM_TEST_LOGIC_ADDR,
// IM_TEST_ENGINE_GRPC_ADDR, IM_TEST_WS_ADDR and IM_TEST_WEB_ADDR. Screenshots of every step go
// to web/test-output/.

import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

import { isFree, Service, sleep, waitForPort } from "./processes.mjs";

const webDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const repo = path.resolve(webDir, "..");
const outputDir = path.join(webDir, "test-output");
const binDir = process.env.IM_BIN_DIR ?? path.join(repo, "target/debug");
const chromiumPath = process.env.IM_CHROMIUM ?? "/usr/bin/chromium";
const logicAddr = process.env.IM_TEST_LOGIC_ADDR ?? "127.0.0.1:31151";
const engineGrpcAddr = process.env.IM_TEST_ENGINE_GRPC_ADDR ?? "127.0.0.1:31152";
const wsAddr = process.env.IM_TEST_WS_ADDR ?? "127.0.0.1:31180";
const webAddr = process.env.IM_TEST_WEB_ADDR ?? "127.0.0.1:31181";
const origin = `http://${webAddr}`;
const pageUrl = `${origin}/?ws=${encodeURIComponent(`ws://${wsAddr}/ws`)}`;

/** Bound of the whole test, processes and browser included. */
const TOTAL_TIMEOUT_MS = 180_000;
const STEP_TIMEOUT_MS = 15_000;
/** Covers a reconnect, which may wait up to 8 s of back-off. */
const RECONNECT_TIMEOUT_MS = 30_000;
const START_TIMEOUT_MS = 60_000;
const PASSWORD = "browser-test-password";

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

function requireEnv(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set: run scripts/test (stage web), which starts the stores`);
  }
  return value;
}

function logicService(runDir) {
  return new Service(
    "logic",
    path.join(binDir, "im-logic"),
    {
      IM_LOGIC_DATABASE_URL: requireEnv("IM_LOGIC_DATABASE_URL"),
      IM_LOGIC_REDIS_URL: requireEnv("IM_LOGIC_REDIS_URL"),
      IM_LOGIC_LISTEN_ADDR: logicAddr,
      IM_LOGIC_METRICS_ADDR: "127.0.0.1:0",
      IM_LOGIC_WEB_ADDR: webAddr,
      IM_LOGIC_WEB_ROOT: path.join(webDir, "dist"),
      IM_LOGIC_ARGON2_MEMORY_KIB: "1024",
      IM_LOGIC_ARGON2_ITERATIONS: "1",
    },
    runDir,
  );
}

function engineService(runDir) {
  return new Service(
    "engine",
    path.join(binDir, "im-engine"),
    {
      IM_ENGINE_LOGIC_URL: `http://${logicAddr}`,
      IM_ENGINE_WS_ADDR: wsAddr,
      IM_ENGINE_GRPC_ADDR: engineGrpcAddr,
      IM_ENGINE_METRICS_ADDR: "127.0.0.1:0",
      IM_ENGINE_ALLOWED_ORIGINS: JSON.stringify([origin]),
      // The hung-engine step stops the engine for more than the default 6 s lease. A lapsed
      // lease makes the logic tier drop the engine's online statuses until the engine
      // reports its devices again. That step tests the failed SEND and its retry alone, so
      // the lease outlasts the hang.
      IM_ENGINE_LEASE_TTL_MS: "60000",
    },
    runDir,
  );
}

/** Runs `action` and fails with `what` when it takes longer than `timeoutMs`. */
async function within(what, timeoutMs, action) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms: ${what}`)), timeoutMs);
  });
  try {
    return await Promise.race([action(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Polls `read` until `check` accepts its value; fails with `what` and the last value. */
async function until(what, read, check, timeoutMs = STEP_TIMEOUT_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  while (Date.now() < deadline) {
    last = await read();
    if (check(last)) {
      return last;
    }
    await sleep(200);
  }
  throw new Error(`timed out after ${timeoutMs} ms: ${what} (last seen: ${JSON.stringify(last)})`);
}

let stepNumber = 0;
async function screenshot(page, name) {
  stepNumber += 1;
  const file = path.join(outputDir, `${String(stepNumber).padStart(2, "0")}-${name}.png`);
  await page.screenshot({ path: file });
  console.log(`  step ${stepNumber}: ${name}`);
}

class User {
  constructor(name, context) {
    this.name = name;
    this.context = context;
    this.page = null;
  }

  async open() {
    this.page = await this.context.newPage();
    this.page.on("console", (message) => {
      if (message.type() === "error") {
        console.log(`  [${this.name} console] ${message.text()}`);
      }
    });
    await this.page.goto(pageUrl, { timeout: STEP_TIMEOUT_MS });
  }

  testId(id) {
    return this.page.getByTestId(id);
  }

  async register() {
    await this.testId("auth-username").fill(this.name);
    await this.testId("auth-password").fill(PASSWORD);
    await this.testId("auth-register").click();
    await this.waitOnline(STEP_TIMEOUT_MS, `${this.name} signed in after registering`);
  }

  /** Returns the credentials of the device this page signed in with. */
  async device() {
    return this.page.evaluate(() => {
      const deviceId = sessionStorage.getItem("im.device");
      const devices = JSON.parse(localStorage.getItem("im.devices") ?? "[]");
      return devices.find((device) => device.deviceId === deviceId) ?? null;
    });
  }

  async login() {
    await this.testId("auth-username").fill(this.name);
    await this.testId("auth-password").fill(PASSWORD);
    await this.testId("auth-login").click();
    await this.waitOnline(STEP_TIMEOUT_MS, `${this.name} signed in with LOGIN`);
  }

  async status() {
    return (await this.testId("status").textContent({ timeout: 1_000 }).catch(() => null)) ?? "";
  }

  async waitOnline(timeoutMs, what) {
    await until(what, () => this.status(), (status) => status === "online", timeoutMs);
  }

  async texts() {
    return this.testId("message-text").allTextContents();
  }

  async seqs() {
    const messages = this.testId("message");
    return messages.evaluateAll((nodes) => nodes.map((node) => Number(node.dataset.seq)));
  }

  async send(text) {
    await this.testId("composer").fill(text);
    await this.testId("send").click();
  }

  /** Waits until the open chat shows exactly `expected`, stored (not pending), in seq order. */
  async expectChat(expected, what, timeoutMs = STEP_TIMEOUT_MS) {
    await until(what, () => this.texts(), (texts) => sameList(texts, expected), timeoutMs);
    const states = await this.testId("message").evaluateAll((nodes) =>
      nodes.map((node) => node.dataset.state),
    );
    await until(
      `${what}: every message stored`,
      () => this.testId("message").evaluateAll((nodes) => nodes.map((node) => node.dataset.state)),
      (list) => list.every((state) => state === "stored"),
    ).catch((error) => {
      throw new Error(`${error.message}; states were ${JSON.stringify(states)}`);
    });
    const seqs = await this.seqs();
    for (let index = 1; index < seqs.length; index += 1) {
      if (!(seqs[index] > seqs[index - 1])) {
        throw new Error(`${what}: seqs not ascending: ${JSON.stringify(seqs)}`);
      }
    }
  }
}

function sameList(actual, expected) {
  return actual.length === expected.length && actual.every((text, index) => text === expected[index]);
}

async function scenario(alice, bob, engine) {
  const conversation = [];

  await alice.open();
  await alice.register();
  await screenshot(alice.page, "register-alice");
  await bob.open();
  await bob.register();
  await screenshot(bob.page, "register-bob");

  await alice.testId("nav-friends").click();
  await alice.testId("friend-search").fill(bob.name);
  await alice.testId("friend-search-button").click();
  await alice.testId("friend-request").click({ timeout: STEP_TIMEOUT_MS });
  await until(
    "alice's friend list shows the request to bob",
    () => alice.testId(`friend-${bob.name}`).textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text.includes("request sent"),
  );
  await screenshot(alice.page, "friend-request");

  await bob.testId("nav-friends").click();
  await bob.testId("friend-accept").click({ timeout: RECONNECT_TIMEOUT_MS });
  await until(
    "bob's friend list shows alice as a friend",
    () => bob.testId(`friend-${alice.name}`).textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text.includes("friend") && !text.includes("wants"),
  );
  await screenshot(bob.page, "friend-accept");
  // Bob's accept pushes a NOTICE that reloads alice's friend list, which her search result
  // follows: the request turned into a friendship.
  await until(
    "alice's search result shows bob as a friend",
    () => alice.testId("friend-found").getAttribute("data-relation", { timeout: 1_000 }).catch(() => ""),
    (relation) => relation === "friend",
  );
  if ((await alice.testId("friend-request").count()) !== 0) {
    throw new Error("alice's search result still offers Add friend after bob accepted");
  }
  await screenshot(alice.page, "friend-found-accepted");

  // Alice writes first; bob's list shows the unread message before he opens the chat.
  await alice.testId("nav-friends").click();
  await alice.testId(`friend-${bob.name}`).getByTestId("friend-chat").click({ timeout: RECONNECT_TIMEOUT_MS });
  for (const text of ["hello bob", "are you there?"]) {
    await alice.send(text);
    conversation.push(text);
  }
  await alice.expectChat(conversation, "alice sees her two messages stored");
  await screenshot(alice.page, "alice-writes");

  const aliceKey = `user:${(await alice.device()).userId}`;
  const bobKey = `user:${(await bob.device()).userId}`;
  await bob.testId("nav-chats").click();
  await until(
    "bob's conversation list shows 2 unread from alice",
    () => bob.testId(`unread-${aliceKey}`).textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text.trim() === "2",
  );
  await screenshot(bob.page, "bob-unread");

  await bob.testId(`conversation-${aliceKey}`).click();
  await bob.expectChat(conversation, "bob sees alice's messages");
  for (const text of ["hi alice", "yes, here"]) {
    await bob.send(text);
    conversation.push(text);
  }
  await bob.expectChat(conversation, "bob sees his replies stored");
  await alice.expectChat(conversation, "alice receives bob's replies");
  await screenshot(bob.page, "bob-replies");

  // Bob closes his page while alice keeps writing, then comes back to the missed messages.
  await bob.page.close();
  const missed = ["while you were away 1", "while you were away 2", "while you were away 3"];
  for (const text of missed) {
    await alice.send(text);
    conversation.push(text);
  }
  await alice.expectChat(conversation, "alice sees her messages to offline bob stored");
  await screenshot(alice.page, "bob-offline");

  await bob.open();
  await bob.waitOnline(STEP_TIMEOUT_MS, "bob signs straight back in from localStorage");
  await until(
    "bob's list shows the 3 missed messages as unread",
    () => bob.testId(`unread-${aliceKey}`).textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text.trim() === "3",
  );
  await bob.testId(`conversation-${aliceKey}`).click();
  await bob.expectChat(conversation, "bob sees everything he missed, in order");
  await screenshot(bob.page, "bob-back");

  // The engine stops and starts again; both pages reconnect on their own.
  await engine.stop();
  await until(
    "both pages notice that the engine is gone",
    async () => [await alice.status(), await bob.status()],
    (statuses) => statuses.every((status) => status !== "online"),
  );
  // A message written while the engine is down stays pending and goes out after the reconnect.
  await alice.send("written while the engine was down");
  conversation.push("written while the engine was down");
  await until(
    "alice's message written during the outage shows as pending",
    () => alice.testId("message").last().getAttribute("data-state", { timeout: 1_000 }).catch(() => ""),
    (state) => state === "pending",
  );
  await screenshot(alice.page, "engine-down");

  // Logging in while the engine is unreachable explains that in words. The new tab finds
  // alice's only device in use by her first tab, so it shows the sign-in form.
  const offlineTab = new User(alice.name, alice.context);
  await offlineTab.open();
  await offlineTab.testId("auth-username").fill(alice.name);
  await offlineTab.testId("auth-password").fill(PASSWORD);
  await offlineTab.testId("auth-login").click();
  const offlineError = await until(
    "logging in without an engine shows an error",
    () => offlineTab.testId("auth-error").textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text !== "",
  );
  if (!offlineError.startsWith("Cannot reach the server")) {
    throw new Error(`unexpected error text for an unreachable engine: ${offlineError}`);
  }
  await screenshot(offlineTab.page, "login-engine-down");
  await offlineTab.page.close();
  engine.start();
  await waitForPort(wsAddr, START_TIMEOUT_MS, engine.child, "engine");
  await alice.waitOnline(RECONNECT_TIMEOUT_MS, "alice reconnects after the engine restart");
  await bob.waitOnline(RECONNECT_TIMEOUT_MS, "bob reconnects after the engine restart");
  await screenshot(bob.page, "engine-back");

  await alice.send("after the restart, from alice");
  conversation.push("after the restart, from alice");
  await alice.expectChat(conversation, "alice's message after the restart is stored");
  await bob.expectChat(conversation, "bob receives alice's message after the restart");
  await bob.send("after the restart, from bob");
  conversation.push("after the restart, from bob");
  await bob.expectChat(conversation, "bob's message after the restart is stored");
  await alice.expectChat(conversation, "alice receives bob's message after the restart");
  await screenshot(alice.page, "after-restart-alice");
  await screenshot(bob.page, "after-restart-bob");

  // A reload lands on the same client route, served by the index.html fallback.
  await bob.page.reload({ timeout: STEP_TIMEOUT_MS });
  await bob.waitOnline(STEP_TIMEOUT_MS, "bob signs in again after a reload");
  await bob.expectChat(conversation, "bob's reloaded chat shows every message once, in order");
  await screenshot(bob.page, "reload-bob");

  // A hand-typed address with an id above uint64 shows the not-found view and sends nothing.
  const badId = "999999999999999999999";
  await bob.page.goto(`${origin}/chat/user/${badId}`, { timeout: STEP_TIMEOUT_MS });
  await bob.testId("not-found").waitFor({ timeout: STEP_TIMEOUT_MS });
  await bob.waitOnline(STEP_TIMEOUT_MS, "bob signs in on the not-found page");
  if ((await bob.page.locator(`[data-testid="conversation-user:${badId}"]`).count()) !== 0) {
    throw new Error("the bad address added a conversation");
  }
  await screenshot(bob.page, "not-found-bob");
  // An id within uint64 that names no user shows that instead of a composer.
  await bob.page.goto(`${origin}/chat/user/18446744073709551615`, { timeout: STEP_TIMEOUT_MS });
  await bob.testId("chat-missing-user").waitFor({ timeout: STEP_TIMEOUT_MS });
  if ((await bob.testId("composer").count()) !== 0) {
    throw new Error("the chat with a user that does not exist offers a composer");
  }
  await screenshot(bob.page, "missing-user-bob");
  await bob.testId(`conversation-${aliceKey}`).click({ timeout: STEP_TIMEOUT_MS });

  // The engine hangs (SIGSTOP): alice's SEND gets no reply and ends failed at its 10 s
  // deadline. Retry sends it again with the same client message id after the engine resumes,
  // and the message shows once on both sides although the engine received it twice.
  const hung = "sent while the engine hung";
  engine.child.kill("SIGSTOP");
  try {
    await alice.send(hung);
    conversation.push(hung);
    const hungMessage = alice.testId("message").filter({ hasText: hung });
    await until(
      "alice's message to the hung engine ends failed",
      () => hungMessage.getAttribute("data-state", { timeout: 1_000 }).catch(() => ""),
      (state) => state === "failed",
      RECONNECT_TIMEOUT_MS,
    );
    await screenshot(alice.page, "send-failed-alice");
    await hungMessage.getByTestId("message-retry").click({ timeout: STEP_TIMEOUT_MS });
  } finally {
    engine.child.kill("SIGCONT");
  }
  await alice.expectChat(conversation, "alice's retried message is stored once", RECONNECT_TIMEOUT_MS);
  await bob.expectChat(conversation, "bob receives the retried message once");
  await screenshot(alice.page, "send-retried-alice");

  // A second tab of alice gets its own device: the first tab stays connected.
  const firstDevice = await alice.device();
  const aliceTab = new User(alice.name, alice.context);
  await aliceTab.open();
  await aliceTab.testId("auth-username").waitFor({ timeout: STEP_TIMEOUT_MS });
  await screenshot(aliceTab.page, "second-tab-sign-in");
  await aliceTab.login();
  const secondDevice = await aliceTab.device();
  if (!secondDevice || secondDevice.deviceId === firstDevice.deviceId) {
    throw new Error(`the second tab reused device ${JSON.stringify(secondDevice)}`);
  }
  await sleep(1_000);
  if ((await alice.status()) !== "online") {
    throw new Error(`alice's first tab went ${await alice.status()} when the second signed in`);
  }
  await aliceTab.page.reload({ timeout: STEP_TIMEOUT_MS });
  await aliceTab.waitOnline(STEP_TIMEOUT_MS, "alice's second tab signs in again after a reload");
  const reloadedDevice = await aliceTab.device();
  if (reloadedDevice?.deviceId !== secondDevice.deviceId) {
    throw new Error(`the reloaded tab moved from device ${secondDevice.deviceId} to ${reloadedDevice?.deviceId}`);
  }
  await aliceTab.testId(`conversation-${bobKey}`).click({ timeout: STEP_TIMEOUT_MS });
  await alice.send("seen in both tabs");
  conversation.push("seen in both tabs");
  await aliceTab.expectChat(conversation, "alice's second tab shows the first tab's message");
  await alice.expectChat(conversation, "alice's first tab stays connected and stores its message");
  await screenshot(aliceTab.page, "second-tab-alice");
  await aliceTab.page.close();

  // Alice creates a group with bob and writes to it; bob's list shows it unread.
  const groupName = `team ${Date.now().toString(36)}`;
  await alice.testId("nav-groups").click();
  await alice.testId("group-name").fill(groupName);
  await alice.page.getByRole("checkbox", { name: bob.name }).check({ timeout: STEP_TIMEOUT_MS });
  await alice.testId("group-create").click();
  await alice.testId(`group-${groupName}`).getByTestId("group-chat").click({ timeout: STEP_TIMEOUT_MS });
  await alice.send("hello group");
  await alice.expectChat(["hello group"], "alice's group message is stored");
  await screenshot(alice.page, "group-alice");

  await bob.testId("nav-chats").click();
  const bobGroupItem = bob.page.locator('[data-testid^="conversation-group:"]');
  await until(
    "bob's list shows the new group by name",
    () => bobGroupItem.textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text.includes(groupName),
  );
  await until(
    "bob's list shows 1 unread group message",
    () => bob.page.locator('[data-testid^="unread-group:"]').textContent({ timeout: 1_000 }).catch(() => ""),
    (text) => text.trim() === "1",
  );
  await bobGroupItem.click();
  await bob.expectChat(["hello group"], "bob sees the group message");
  await screenshot(bob.page, "group-bob");

  // Bob logs out and back in with his password: LOGIN, then the whole history through SYNC.
  await bob.testId("logout").click();
  await bob.testId("auth-username").waitFor({ timeout: STEP_TIMEOUT_MS });
  await bob.testId("auth-username").fill(bob.name);
  await bob.testId("auth-password").fill(PASSWORD);
  await bob.testId("auth-login").click();
  await bob.waitOnline(STEP_TIMEOUT_MS, "bob signs in again with LOGIN");
  await bob.testId(`conversation-${aliceKey}`).click({ timeout: STEP_TIMEOUT_MS });
  await bob.expectChat(conversation, "bob's history after LOGIN is complete and in order");
  await screenshot(bob.page, "login-again-bob");
  return { conversation, bobKey };
}

async function main() {
  const started = Date.now();
  for (const binary of ["im-logic", "im-engine"]) {
    if (!existsSync(path.join(binDir, binary))) {
      throw new Error(`${path.join(binDir, binary)} is missing: run cargo build -p im-logic -p im-engine`);
    }
  }
  if (!existsSync(path.join(webDir, "dist/index.html"))) {
    throw new Error("web/dist/index.html is missing: run npm run build in web/");
  }
  if (!existsSync(chromiumPath)) {
    throw new Error(`${chromiumPath} is missing: apt-get install chromium`);
  }
  for (const addr of [logicAddr, engineGrpcAddr, wsAddr, webAddr]) {
    if (!(await isFree(addr))) {
      throw new Error(`${addr} is already in use: stop that program or move the IM_TEST_* address`);
    }
  }
  rmSync(outputDir, { recursive: true, force: true });
  mkdirSync(outputDir, { recursive: true });
  const runDir = path.join(outputDir, "run");
  const profiles = mkdtempSync(path.join(os.tmpdir(), "im-browser-"));

  const logic = logicService(runDir);
  const engine = engineService(runDir);
  const contexts = [];
  try {
    logic.start();
    await waitForPort(webAddr, START_TIMEOUT_MS, logic.child, "logic");
    engine.start();
    await waitForPort(wsAddr, START_TIMEOUT_MS, engine.child, "engine");

    const suffix = Date.now().toString(36);
    const users = [];
    for (const name of [`alice_${suffix}`, `bob_${suffix}`]) {
      // One browser profile per user: separate localStorage, as on two machines.
      const context = await chromium.launchPersistentContext(path.join(profiles, name), {
        executablePath: chromiumPath,
        headless: true,
        args: CHROMIUM_ARGS,
        viewport: { width: 1000, height: 640 },
        timeout: STEP_TIMEOUT_MS,
      });
      contexts.push(context);
      // A persistent context opens with one blank page; the test opens its own.
      for (const page of context.pages()) {
        await page.close();
      }
      users.push(new User(name, context));
    }
    const result = await within("the browser scenario", TOTAL_TIMEOUT_MS - (Date.now() - started), () =>
      scenario(users[0], users[1], engine),
    );
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    console.log(`browser test passed in ${seconds} s: ${result.conversation.length} messages, screenshots in ${outputDir}`);
    console.log("1 passed, 0 failed");
  } finally {
    for (const context of contexts) {
      await context.close().catch(() => undefined);
    }
    await engine.stop();
    await logic.stop();
    rmSync(profiles, { recursive: true, force: true });
  }
}

const guard = setTimeout(() => {
  console.error(`browser test: the whole run passed ${TOTAL_TIMEOUT_MS + 20_000} ms; giving up`);
  process.exit(1);
}, TOTAL_TIMEOUT_MS + 20_000);
guard.unref();

main().then(
  () => process.exit(0),
  (error) => {
    console.error(`browser test FAILED: ${error.message}`);
    console.error(`process logs: ${path.join(outputDir, "run")}`);
    console.log("0 passed, 1 failed");
    process.exit(1);
  },
);
