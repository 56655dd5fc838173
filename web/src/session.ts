// The signed-in device of this tab (devices.ts), LOGIN and REGISTER, SIGN_IN and SYNC after
// every (re)connect, pushes into the message store, notices into list reloads, sends with their
// pending state, and the names the views show. The views read `session.state` and
// `session.store`, both reactive.

import { reactive } from "vue";

import { ApiError, BusinessApi } from "./api";
import type { Credentials, GroupInfo } from "./api";
import { coalesce } from "./coalesce";
import { DevicePool, LOGOUT_KEY } from "./devices";
import { ConversationType, ErrorCode, PacketType } from "./gen/im/v1/packet_pb";
import type { Notice, Packet } from "./gen/im/v1/packet_pb";
import { noticeEffect } from "./notices";
import {
  ConnectionClosedError,
  DeadlineError,
  decodePush,
  NotConnectedError,
  ProtocolError,
} from "./protocol";
import { Socket } from "./socket";
import type { SocketState } from "./socket";
import { MessageStore, parseConversationKey } from "./store";
import { closeText, errorText, failureText, kickText, needsLogin } from "./texts";

/** Where earlier versions kept the browser's one device; moved into the pool at start. */
const LEGACY_CREDENTIALS_KEY = "im.credentials";
const WS_URL_KEY = "im.wsUrl";
const SYNC_PAGE = 200;
/** Max SEND attempts for a message whose reply code requests a retry (UNAVAILABLE, TIMEOUT, BUSY, RATE_LIMITED). */
const SEND_ATTEMPTS = 5;
const SEND_RETRY_DELAY_MS = 2_000;
/**
 * SYNC pages in a row that the server may reject unhandled (RATE_LIMITED, BUSY) before a sync
 * stops until the next sign-in. The engine allows 50 packets a second with a burst of 100 by
 * default, and each page costs a SYNC and a MESSAGE_ACK, so a long backlog passes the burst.
 */
const SYNC_REJECTIONS = 20;
const SYNC_RETRY_DELAY_MS = 100;
/**
 * How long a gap waits for the push that fills it before a SYNC. Pushes of messages stored
 * close together may arrive out of order, and a SEND reply may come before the push of a
 * message stored just ahead of it. Such a gap closes within milliseconds.
 */
const GAP_WAIT_MS = 250;
/** Wait before acking again after a rejected MESSAGE_ACK whose reply names no wait. */
const ACK_RETRY_DELAY_MS = 100;
const LOGOUT_TIMEOUT_MS = 3_000;
/** Most content bytes of one message, the logic tier's default `max_content_bytes`. */
export const MAX_CONTENT_BYTES = 16 * 1024;

const encoder = new TextEncoder();

/** Connection and user state that the views render. */
export interface SessionState {
  credentials: Credentials | null;
  /** True until the tab has looked for a stored device it can sign in with. */
  restoring: boolean;
  socket: SocketState;
  signedIn: boolean;
  /** A sentence about the last close, kick or failure, or empty. */
  notice: string;
  /** Usernames by user id, filled from friend lists and look-ups. */
  names: Record<string, string>;
  /** User ids that a look-up found to name no user. */
  missingUsers: Record<string, true>;
  groups: Record<string, GroupInfo>;
  /**
   * Grows with each friend notice and each sign-in (which may follow missed notices). Views that
   * show the friend list reload it when this changes.
   */
  friendListVersion: number;
  /** As `friendListVersion`, for group notices and the group list. */
  groupListVersion: number;
  /**
   * The group that the signed-in user was last removed from, by a notice. A new object each
   * time, so a watcher is triggered by every removal. Null before any.
   */
  leftGroup: { groupId: string } | null;
  /** Username of the most recently used stored device, to fill in the sign-in form. */
  lastUsername: string;
}

/** Returns the engine's WebSocket URL: `?ws=` (kept for later visits), else port 8080 of this host. */
export function resolveWsUrl(location: Location, storage: Storage): string {
  const fromQuery = new URLSearchParams(location.search).get("ws");
  if (fromQuery) {
    storage.setItem(WS_URL_KEY, fromQuery);
    return fromQuery;
  }
  return storage.getItem(WS_URL_KEY) ?? `ws://${location.hostname}:8080/ws`;
}

function loadLegacyCredentials(storage: Storage): Credentials | null {
  try {
    const stored = storage.getItem(LEGACY_CREDENTIALS_KEY) ?? "null";
    const parsed = JSON.parse(stored) as Credentials | null;
    if (parsed && parsed.userId && parsed.deviceId && parsed.token) {
      return parsed;
    }
  } catch {
    // A damaged entry is treated as no entry.
  }
  return null;
}

function isRetryable(code: ErrorCode): boolean {
  return (
    code === ErrorCode.UNAVAILABLE ||
    code === ErrorCode.TIMEOUT ||
    code === ErrorCode.BUSY ||
    code === ErrorCode.RATE_LIMITED
  );
}

/** Tells whether the server rejected a request unhandled, so that sending it again is safe. */
function isRejectedUnhandled(code: ErrorCode): boolean {
  return code === ErrorCode.BUSY || code === ErrorCode.RATE_LIMITED;
}

export class Session {
  readonly state: SessionState;
  readonly store: MessageStore;
  readonly api: BusinessApi;
  private readonly socket: Socket;
  private syncing: Promise<void> | null = null;
  private syncAgain = false;
  private ackedSeq = 0;
  /** Timer of the ack that replaces one the rate limit rejected, while it waits. */
  private ackRetry: ReturnType<typeof setTimeout> | null = null;
  /** Timer of the SYNC that fills a gap unless its push comes first. */
  private gapSync: ReturnType<typeof setTimeout> | null = null;
  private kicked = false;
  private loggingOut = false;
  /** Counts resets, so that a group list asked for before one is dropped. */
  private groupsGeneration = 0;
  /** Group ids whose unknown name already triggered a reload of the group list. */
  private readonly groupsRequested = new Set<string>();

  constructor(
    wsUrl: string,
    apiBaseUrl: string,
    private readonly storage: Storage,
    private readonly devices: DevicePool,
  ) {
    this.state = reactive<SessionState>({
      credentials: null,
      restoring: true,
      socket: "closed",
      signedIn: false,
      notice: "",
      names: {},
      missingUsers: {},
      groups: {},
      friendListVersion: 0,
      groupListVersion: 0,
      leftGroup: null,
      lastUsername: "",
    });
    this.store = reactive(new MessageStore("0")) as MessageStore;
    this.api = new BusinessApi(apiBaseUrl, () => this.state.credentials);
    this.socket = new Socket(wsUrl, {
      onOpen: () => this.onOpen(),
      onPacket: (packet) => this.onPacket(packet),
      onClose: (code, _reason, reconnectInMs) => this.onClose(code, reconnectInMs),
      onState: (socketState) => {
        this.state.socket = socketState;
      },
    });
  }

  /**
   * Takes a stored device that no other tab uses and signs straight in with it. Without one,
   * the sign-in form shows.
   */
  async start(): Promise<void> {
    const legacy = loadLegacyCredentials(this.storage);
    if (legacy) {
      this.storage.removeItem(LEGACY_CREDENTIALS_KEY);
      if (!this.devices.has(legacy.deviceId)) {
        await this.devices.save(legacy);
        this.devices.release(legacy.deviceId);
      }
    }
    const device = await this.devices.claim();
    this.state.restoring = false;
    if (!device) {
      const stored = this.devices.devices();
      this.state.lastUsername = stored[0]?.username ?? "";
      if (stored.length > 0) {
        this.state.notice =
          "Your account is open in other tabs of this browser. " +
          "Log in to use it in this tab as well.";
      }
      return;
    }
    const { usedAtMs: _usedAtMs, ...credentials } = device;
    this.resetFor(credentials);
    this.restoreReadMarks();
    void this.socket.open(true).catch(() => undefined);
  }

  /**
   * Logs this tab out when another tab announced a logout of the same user. Call with every
   * change that another tab made to localStorage.
   */
  storageChanged(key: string | null, value: string | null): void {
    const userId = this.state.credentials?.userId;
    if (
      key === LOGOUT_KEY &&
      userId &&
      !this.loggingOut &&
      DevicePool.loggedOutUser(value) === userId
    ) {
      void this.logout();
    }
  }

  /** Reconnects at once when the browser is back online. */
  online(): void {
    if (!this.kicked) {
      this.socket.reconnectNow();
    }
  }

  /** Registers a user, then logs in as that user; throws with a sentence on failure. */
  async register(username: string, password: string): Promise<void> {
    try {
      await this.socket.open(false);
      await this.socket.request(PacketType.REGISTER, { username, password, open: false });
    } catch (error) {
      throw new Error(failureText(error));
    }
    await this.login(username, password);
  }

  /** Logs in with LOGIN, keeping this browser's device id for the same user. */
  async login(username: string, password: string): Promise<void> {
    // A stored device of this user that no tab uses keeps its device id; else LOGIN makes one.
    const previous = await this.devices.claim(username);
    const deviceId = previous ? BigInt(previous.deviceId) : 0n;
    let reply;
    try {
      await this.socket.open(false);
      reply = await this.socket.request(PacketType.LOGIN, {
        username,
        password,
        deviceId,
        device: { platform: "web", model: navigator.userAgent.slice(0, 64), appVersion: "0.1.0" },
      });
    } catch (error) {
      if (previous) {
        this.devices.release(previous.deviceId);
      }
      throw new Error(failureText(error));
    }
    const credentials: Credentials = {
      userId: reply.userId.toString(),
      deviceId: reply.deviceId.toString(),
      token: reply.token,
      username,
    };
    if (previous && previous.deviceId !== credentials.deviceId) {
      this.devices.release(previous.deviceId);
    }
    await this.devices.save(credentials);
    this.resetFor(credentials);
    this.restoreReadMarks();
    // The connection is signed in by LOGIN; from now on it reconnects by itself.
    await this.afterSignIn(reply.heartbeatIntervalMs);
    // Already open, so this only turns on reconnecting; a failed reconnect shows in the notice.
    void this.socket.open(true).catch(() => undefined);
  }

  /**
   * Sends LOGOUT, which revokes this tab's token, when signed in, then signs out locally. It also
   * deletes every stored device of the user and tells the user's other tabs to log out.
   */
  async logout(): Promise<void> {
    const userId = this.state.credentials?.userId;
    this.loggingOut = true;
    if (this.state.signedIn) {
      // A failed LOGOUT leaves the token valid on the server, but this browser deletes it anyway.
      await this.socket.request(PacketType.LOGOUT, {}, LOGOUT_TIMEOUT_MS).catch(() => undefined);
    }
    this.loggingOut = false;
    this.signOutLocally();
    // NOTE: a stored device that no tab uses keeps a valid token on the server until it
    // expires, because only a signed-in connection of that device can send LOGOUT.
    if (userId) {
      for (const device of this.devices.devices()) {
        if (device.userId === userId) {
          this.devices.forget(device.deviceId);
        }
      }
      this.devices.announceLogout(userId);
    }
  }

  /** Deletes this tab's device and token, closes the connection and clears the messages. */
  private signOutLocally(): void {
    this.socket.stop();
    const deviceId = this.state.credentials?.deviceId;
    if (deviceId) {
      this.devices.forget(deviceId);
    }
    this.resetFor(null);
    this.state.notice = "";
  }

  /** Sends a text to a conversation; it shows as pending until the SEND reply. */
  send(conversation: string, text: string): void {
    const clientMsgId = crypto.randomUUID();
    this.store.addPending(conversation, text, clientMsgId);
    void this.deliver(conversation, text, clientMsgId);
  }

  /** Sends a failed message again with its original client message id, so it is stored once. */
  retry(clientMsgId: string): void {
    const message = this.store.unsent(clientMsgId);
    if (message && this.store.retry(clientMsgId)) {
      void this.deliver(message.conversation, message.text, clientMsgId);
    }
  }

  /** Deletes a failed message from the conversation. */
  remove(clientMsgId: string): void {
    this.store.remove(clientMsgId);
  }

  /** Marks a conversation read and saves the read marks. */
  markRead(conversation: string): void {
    this.store.markRead(conversation);
    const userId = this.state.credentials?.userId;
    if (userId) {
      this.storage.setItem(`im.read.${userId}`, JSON.stringify(this.store.readMarks()));
    }
  }

  /** Returns the display name of a conversation, looking unknown users up in the background. */
  conversationName(conversation: string): string {
    const parsed = parseConversationKey(conversation);
    if (!parsed) {
      return conversation;
    }
    if (parsed.type === ConversationType.GROUP) {
      const group = this.state.groups[parsed.id];
      if (group) {
        return `# ${group.name}`;
      }
      this.lookUpGroup(parsed.id);
      return `# group ${parsed.id}`;
    }
    return this.userName(parsed.id);
  }

  /** Returns a user's name, looking it up in the background when it is not known yet. */
  userName(userId: string): string {
    const name = this.state.names[userId];
    if (name === undefined) {
      this.state.names[userId] = `user ${userId}`;
      this.api.getUser(userId).then(
        (user) => {
          this.state.names[userId] = user.username;
        },
        (error: unknown) => {
          if (error instanceof ApiError && error.code === ErrorCode.NOT_FOUND) {
            this.state.missingUsers[userId] = true;
          }
        },
      );
      return `user ${userId}`;
    }
    return name;
  }

  /** Reloads the group list once for a group that a message named before the list had it. */
  private lookUpGroup(groupId: string): void {
    if (this.groupsRequested.has(groupId)) {
      return;
    }
    this.groupsRequested.add(groupId);
    void this.refreshGroups().catch(() => undefined);
  }

  /**
   * Reloads the groups the user belongs to and replaces the known list with them, so a group
   * the user left while offline goes too. Calls made while a reload runs share one more reload
   * after it: a burst of notices costs two calls, and the last one starts after the last notice.
   */
  readonly refreshGroups: () => Promise<GroupInfo[]> = coalesce(() => this.loadGroups());

  private loadGroups(): Promise<GroupInfo[]> {
    const generation = this.groupsGeneration;
    return this.api.listGroups().then((groups) => {
      // A reply for the user signed in before a reset is dropped.
      if (generation === this.groupsGeneration) {
        const fresh: Record<string, GroupInfo> = {};
        for (const group of groups) {
          fresh[group.groupId.toString()] = group;
        }
        this.state.groups = fresh;
      }
      return groups;
    });
  }

  private resetFor(credentials: Credentials | null): void {
    this.state.credentials = credentials;
    this.state.signedIn = false;
    this.state.names = credentials ? { [credentials.userId]: credentials.username } : {};
    this.state.missingUsers = {};
    this.state.groups = {};
    this.groupsGeneration += 1;
    this.store.reset(credentials?.userId ?? "0");
    this.ackedSeq = 0;
    this.cancelAckRetry();
    this.cancelGapSync();
    this.kicked = false;
  }

  private restoreReadMarks(): void {
    const userId = this.state.credentials?.userId;
    try {
      const marks = JSON.parse(this.storage.getItem(`im.read.${userId}`) ?? "{}");
      this.store.restoreReadMarks(marks as Record<string, number>);
    } catch {
      // Damaged marks only make messages show as unread.
    }
  }

  /** Signs the fresh connection in with the stored token (not on the LOGIN connection). */
  private async onOpen(): Promise<void> {
    const credentials = this.state.credentials;
    if (!credentials || this.state.signedIn) {
      return;
    }
    try {
      const reply = await this.socket.request(PacketType.SIGN_IN, {
        userId: BigInt(credentials.userId),
        deviceId: BigInt(credentials.deviceId),
        token: credentials.token,
      });
      await this.afterSignIn(reply.heartbeatIntervalMs);
    } catch (error) {
      if (error instanceof ProtocolError && needsLogin(error.code)) {
        this.signOutLocally();
        this.state.notice = errorText(error.code);
      } else {
        this.state.notice = `Signing in failed: ${failureText(error)}`;
      }
      throw error;
    }
  }

  private async afterSignIn(heartbeatIntervalMs: number): Promise<void> {
    this.state.signedIn = true;
    this.state.notice = "";
    this.socket.markHealthy();
    this.socket.startHeartbeat(heartbeatIntervalMs);
    // Notices sent while this page was offline are lost, so the lists are reloaded.
    this.state.friendListVersion += 1;
    this.state.groupListVersion += 1;
    void this.refreshGroups().catch(() => undefined);
    // An ack sent just before the connection closed may be lost, so the sync acks again.
    this.ackedSeq = 0;
    await this.sync();
    this.resendPending();
  }

  private onClose(code: number, reconnectInMs: number | null): void {
    const wasSignedIn = this.state.signedIn;
    this.state.signedIn = false;
    this.cancelAckRetry();
    this.cancelGapSync();
    if (this.kicked || code === 1000 || !this.state.credentials) {
      return;
    }
    if (wasSignedIn || reconnectInMs !== null) {
      this.state.notice = closeText(code);
    }
  }

  private onPacket(packet: Packet): void {
    if (packet.type === PacketType.MESSAGE) {
      const message = decodePush(PacketType.MESSAGE, packet);
      this.afterArrival(this.store.add([message]).gap);
    } else if (packet.type === PacketType.KICKED) {
      const kicked = decodePush(PacketType.KICKED, packet);
      this.kicked = true;
      this.state.notice = kickText(kicked.reason);
    } else if (packet.type === PacketType.NOTICE) {
      this.applyNotice(decodePush(PacketType.NOTICE, packet));
    } else if (packet.type === PacketType.ERROR && packet.code === ErrorCode.RATE_LIMITED) {
      // MESSAGE_ACK is the only packet the page sends without a request id, so the rate
      // limit dropped an ack.
      this.retryAck(packet.retryAfterMs || ACK_RETRY_DELAY_MS);
    } else if (packet.type === PacketType.ERROR) {
      console.warn(`server reported ${ErrorCode[packet.code]}: ${packet.message}`);
    }
  }

  /**
   * Acks the held seq again after `delayMs`. Acks are cumulative, so one ack of the held seq
   * replaces every rejected one. Rejections that arrive while it waits share its timer.
   */
  private retryAck(delayMs: number): void {
    if (this.ackRetry !== null) {
      return;
    }
    this.ackRetry = setTimeout(() => {
      this.ackRetry = null;
      this.ackedSeq = 0;
      this.acknowledge();
    }, delayMs);
  }

  /**
   * Acks what a push or SEND reply added, and when it left a gap, syncs unless the gap closes
   * within {@link GAP_WAIT_MS}.
   */
  private afterArrival(gap: boolean): void {
    this.acknowledge();
    if (!gap) {
      this.cancelGapSync();
      return;
    }
    if (this.gapSync !== null) {
      return;
    }
    this.gapSync = setTimeout(() => {
      this.gapSync = null;
      if (this.store.hasGap) {
        void this.sync();
      }
    }, GAP_WAIT_MS);
  }

  private cancelGapSync(): void {
    if (this.gapSync !== null) {
      clearTimeout(this.gapSync);
      this.gapSync = null;
    }
  }

  private cancelAckRetry(): void {
    if (this.ackRetry !== null) {
      clearTimeout(this.ackRetry);
      this.ackRetry = null;
    }
  }

  /** Reloads the list that a notice names. A notice of an unknown kind changes nothing. */
  private applyNotice(notice: Notice): void {
    const effect = noticeEffect(notice, this.state.credentials?.userId ?? "");
    if (effect.reload === "friends") {
      this.state.friendListVersion += 1;
    } else if (effect.reload === "groups") {
      if (effect.leftGroupId) {
        // At once: the reload below may wait behind another.
        delete this.state.groups[effect.leftGroupId];
        this.state.leftGroup = { groupId: effect.leftGroupId };
      }
      this.state.groupListVersion += 1;
      void this.refreshGroups().catch(() => undefined);
    }
  }

  /** Runs SYNC from the held seq until no page is left; concurrent calls share one run. */
  private sync(): Promise<void> {
    if (this.syncing) {
      this.syncAgain = true;
      return this.syncing;
    }
    this.syncing = this.syncPages().finally(() => {
      this.syncing = null;
      if (this.syncAgain) {
        this.syncAgain = false;
        void this.sync();
      }
    });
    return this.syncing;
  }

  private async syncPages(): Promise<void> {
    let rejected = 0;
    for (;;) {
      const afterSeq = this.store.heldSeq;
      let reply;
      try {
        reply = await this.socket.request(PacketType.SYNC, {
          afterSeq: BigInt(afterSeq),
          limit: SYNC_PAGE,
        });
      } catch (error) {
        if (error instanceof ProtocolError && isRejectedUnhandled(error.code) && rejected < SYNC_REJECTIONS) {
          // Nothing was done: ask for the same page again after the wait the reply names.
          rejected += 1;
          const delay = error.retryAfterMs || SYNC_RETRY_DELAY_MS;
          await new Promise((resolve) => setTimeout(resolve, delay));
          continue;
        }
        // The next sign-in syncs again.
        console.warn(`SYNC failed: ${failureText(error)}`);
        return;
      }
      rejected = 0;
      this.store.addSyncPage(afterSeq, reply.messages);
      this.acknowledge();
      if (!reply.hasMore || reply.messages.length === 0) {
        return;
      }
    }
  }

  private acknowledge(): void {
    const held = this.store.heldSeq;
    if (held > this.ackedSeq && this.socket.acknowledge(BigInt(held))) {
      this.ackedSeq = held;
    }
  }

  private resendPending(): void {
    for (const message of this.store.pendingMessages()) {
      void this.deliver(message.conversation, message.text, message.clientMsgId);
    }
  }

  /**
   * Sends one SEND. A message written while no connection is signed in stays pending and goes
   * out after the next sign-in. Once sent, it ends stored or failed: a missed deadline or a
   * closed connection marks it failed, and Retry sends it again with the same client message id.
   */
  private async deliver(
    conversation: string,
    text: string,
    clientMsgId: string,
    attempt = 1,
  ): Promise<void> {
    // Checked here as well as by the server, on every attempt including Retry: a message far
    // over the limit would exceed the engine's frame limit and close the connection (1009)
    // instead of getting CONTENT_TOO_LARGE.
    const bytes = encoder.encode(text).length;
    if (bytes > MAX_CONTENT_BYTES) {
      this.store.fail(
        clientMsgId,
        `The message is too long: ${bytes} bytes, at most ${MAX_CONTENT_BYTES}. Shorten it.`,
      );
      return;
    }
    const target = parseConversationKey(conversation);
    if (!target) {
      this.store.fail(clientMsgId, "This conversation does not exist, so it cannot be sent.");
      return;
    }
    if (!this.state.signedIn) {
      return;
    }
    try {
      const reply = await this.socket.request(PacketType.SEND, {
        conversationType: target.type,
        receiverId: BigInt(target.id),
        content: encoder.encode(text),
        contentType: "text/plain",
        clientMsgId,
      });
      const result = this.store.confirm(
        clientMsgId,
        Number(reply.seq),
        reply.messageId.toString(),
        Number(reply.sentAtMs),
      );
      this.afterArrival(result.gap);
    } catch (error) {
      if (error instanceof ProtocolError && isRetryable(error.code) && attempt < SEND_ATTEMPTS) {
        const delay = error.retryAfterMs || SEND_RETRY_DELAY_MS;
        setTimeout(() => void this.deliver(conversation, text, clientMsgId, attempt + 1), delay);
      } else if (error instanceof NotConnectedError) {
        // Nothing was sent: the message stays pending for the resend after the next sign-in.
      } else if (error instanceof DeadlineError) {
        this.store.fail(clientMsgId, "The server did not confirm it in time.");
      } else if (error instanceof ConnectionClosedError) {
        this.store.fail(clientMsgId, "The connection closed before the server confirmed it.");
      } else {
        this.store.fail(clientMsgId, failureText(error));
      }
    }
  }
}
