// Messages the device holds: one user's sequence, ordered by seq, without duplicates, with the
// highest contiguous seq (the point SYNC resumes from), gap detection, unread counts per
// conversation and local messages still waiting for their SEND reply.

import { ConversationType } from "./gen/im/v1/packet_pb";
import type { Message } from "./gen/im/v1/packet_pb";

/** Delivery state of a message in the view. */
export type MessageState = "stored" | "pending" | "failed";

/** A message as the views show it. Ids are decimal strings; `seq` is 0 until stored. */
export interface ChatMessage {
  seq: number;
  messageId: string;
  senderUserId: string;
  conversation: string;
  text: string;
  clientMsgId: string;
  sentAtMs: number;
  state: MessageState;
  error: string;
  /**
   * For a message not stored yet: the highest seq this device held when it was written. The
   * view places it after every stored message up to that seq and before later ones.
   */
  afterSeq: number;
}

/** One line of the conversation list. */
export interface ConversationSummary {
  key: string;
  lastText: string;
  lastSeq: number;
  unread: number;
}

/** Result of adding messages. */
export interface AddResult {
  added: number;
  duplicates: number;
  /** True when a seq above the contiguous range is held, so something below it is missing. */
  gap: boolean;
}

const decoder = new TextDecoder();

/** Returns the conversation key of a user or group id: "user:ID" or "group:ID". */
export function conversationKey(type: ConversationType, id: bigint | string): string {
  return `${type === ConversationType.GROUP ? "group" : "user"}:${id}`;
}

const MAX_UINT64 = (1n << 64n) - 1n;

/** Returns true for a decimal user or group id: a positive integer that fits in uint64. */
export function isValidId(id: string): boolean {
  return /^[1-9]\d{0,19}$/.test(id) && BigInt(id) <= MAX_UINT64;
}

/** Parses a conversation key back into its type and id; an id outside uint64 is rejected. */
export function parseConversationKey(
  key: string,
): { type: ConversationType; id: string } | undefined {
  const match = /^(user|group):(\d+)$/.exec(key);
  if (!match || !isValidId(match[2])) {
    return undefined;
  }
  const type = match[1] === "group" ? ConversationType.GROUP : ConversationType.USER;
  return { type, id: match[2] };
}

export class MessageStore {
  private readonly bySeq = new Map<number, ChatMessage>();
  /** Seqs of each conversation, ascending. */
  private readonly seqsByConversation = new Map<string, number[]>();
  /** Messages sent from this device without a SEND reply yet, by client message id. */
  private readonly pending = new Map<string, ChatMessage>();
  private readonly readSeq = new Map<string, number>();
  private contiguous = 0;
  private highest = 0;

  constructor(private selfUserId: string) {}

  /** Forgets every message and read mark, for another user. */
  reset(selfUserId: string): void {
    this.selfUserId = selfUserId;
    this.bySeq.clear();
    this.seqsByConversation.clear();
    this.pending.clear();
    this.readSeq.clear();
    this.contiguous = 0;
    this.highest = 0;
  }

  /** Highest seq held with no gap below it; SYNC resumes after it. */
  get heldSeq(): number {
    return this.contiguous;
  }

  /** True when a seq above {@link heldSeq} is held, so a SYNC must fill the gap. */
  get hasGap(): boolean {
    return this.highest > this.contiguous;
  }

  /** Returns the conversation a received message belongs to. */
  conversationOf(message: Message): string {
    if (message.conversationType === ConversationType.GROUP) {
      return conversationKey(ConversationType.GROUP, message.receiverId);
    }
    const sender = message.senderUserId.toString();
    const peer = sender === this.selfUserId ? message.receiverId : message.senderUserId;
    return conversationKey(ConversationType.USER, peer);
  }

  /** Adds pushed or synced messages; a seq already held is counted as a duplicate and dropped. */
  add(messages: Iterable<Message>): AddResult {
    let added = 0;
    let duplicates = 0;
    for (const message of messages) {
      const seq = Number(message.seq);
      if (seq <= 0 || this.bySeq.has(seq)) {
        duplicates += 1;
        continue;
      }
      const senderUserId = message.senderUserId.toString();
      const ownPending =
        senderUserId === this.selfUserId ? this.pending.get(message.clientMsgId) : undefined;
      if (ownPending) {
        this.pending.delete(message.clientMsgId);
      }
      this.insert({
        seq,
        messageId: message.messageId.toString(),
        senderUserId,
        conversation: this.conversationOf(message),
        text: decoder.decode(message.content),
        clientMsgId: message.clientMsgId,
        sentAtMs: Number(message.sentAtMs),
        state: "stored",
        error: "",
        afterSeq: 0,
      });
      added += 1;
    }
    return { added, duplicates, gap: this.hasGap };
  }

  /**
   * Adds one SYNC page requested after `afterSeq`. A seq above `afterSeq` that the page passes
   * over was deleted by the logic tier's `message_retention_days`: seqs are committed in order,
   * so a page that contains a seq contains every lower one still stored. The held seq moves past
   * such a seq instead of waiting for it.
   */
  addSyncPage(afterSeq: number, messages: Message[]): AddResult {
    const result = this.add(messages);
    if (this.contiguous < afterSeq) {
      return result;
    }
    for (const message of messages) {
      const seq = Number(message.seq);
      if (seq > this.contiguous + 1) {
        this.contiguous = seq - 1;
      }
      while (this.bySeq.has(this.contiguous + 1)) {
        this.contiguous += 1;
      }
    }
    return { ...result, gap: this.hasGap };
  }

  /** Adds a message sent from this device that waits for its SEND reply. */
  addPending(conversation: string, text: string, clientMsgId: string): ChatMessage {
    const message: ChatMessage = {
      seq: 0,
      messageId: "",
      senderUserId: this.selfUserId,
      conversation,
      text,
      clientMsgId,
      sentAtMs: Date.now(),
      state: "pending",
      error: "",
      afterSeq: this.highest,
    };
    this.pending.set(clientMsgId, message);
    return message;
  }

  /**
   * Stores a pending message at the seq its SEND reply assigned. When a SYNC already brought
   * that seq, the pending copy is simply dropped.
   */
  confirm(clientMsgId: string, seq: number, messageId: string, sentAtMs: number): AddResult {
    const message = this.pending.get(clientMsgId);
    if (!message) {
      return { added: 0, duplicates: 1, gap: this.hasGap };
    }
    this.pending.delete(clientMsgId);
    if (this.bySeq.has(seq)) {
      return { added: 0, duplicates: 1, gap: this.hasGap };
    }
    this.insert({ ...message, seq, messageId, sentAtMs, state: "stored", error: "", afterSeq: 0 });
    return { added: 1, duplicates: 0, gap: this.hasGap };
  }

  /** Marks a pending message failed, with the text to show beside it. */
  fail(clientMsgId: string, error: string): void {
    const message = this.pending.get(clientMsgId);
    if (message) {
      this.pending.set(clientMsgId, { ...message, state: "failed", error });
    }
  }

  /**
   * Puts a failed message back into the pending state for another SEND with the same client
   * message id. Returns false when no failed message has that id.
   */
  retry(clientMsgId: string): boolean {
    const message = this.pending.get(clientMsgId);
    if (!message || message.state !== "failed") {
      return false;
    }
    this.pending.set(clientMsgId, { ...message, state: "pending", error: "" });
    return true;
  }

  /** Deletes a failed message that the user gave up on; returns false when none has that id. */
  remove(clientMsgId: string): boolean {
    const message = this.pending.get(clientMsgId);
    if (!message || message.state !== "failed") {
      return false;
    }
    return this.pending.delete(clientMsgId);
  }

  /** Returns the pending or failed message with this client message id, if any. */
  unsent(clientMsgId: string): ChatMessage | undefined {
    return this.pending.get(clientMsgId);
  }

  /** Returns the messages still waiting for a SEND reply (not the failed ones), oldest first. */
  pendingMessages(): ChatMessage[] {
    return [...this.pending.values()].filter((message) => message.state === "pending");
  }

  /**
   * Returns a conversation's messages in the order they were written: stored ones by seq, and
   * each pending or failed one after the stored messages this device held when it was written.
   */
  messagesOf(conversation: string): ChatMessage[] {
    const seqs = this.seqsByConversation.get(conversation) ?? [];
    const stored = seqs.map((seq) => this.bySeq.get(seq) as ChatMessage);
    // Map order is the order of addPending, so unsent messages with the same afterSeq keep the
    // order they were written in.
    const unsent = [...this.pending.values()]
      .filter((message) => message.conversation === conversation)
      .sort((a, b) => a.afterSeq - b.afterSeq);
    const merged: ChatMessage[] = [];
    let next = 0;
    for (const message of stored) {
      while (next < unsent.length && unsent[next].afterSeq < message.seq) {
        merged.push(unsent[next]);
        next += 1;
      }
      merged.push(message);
    }
    return merged.concat(unsent.slice(next));
  }

  /** Returns the number of messages from others in a conversation above its read mark. */
  unread(conversation: string): number {
    const readSeq = this.readSeq.get(conversation) ?? 0;
    const seqs = this.seqsByConversation.get(conversation) ?? [];
    let count = 0;
    for (let index = seqs.length - 1; index >= 0 && seqs[index] > readSeq; index -= 1) {
      if (this.bySeq.get(seqs[index])?.senderUserId !== this.selfUserId) {
        count += 1;
      }
    }
    return count;
  }

  /** Marks every message of a conversation read. */
  markRead(conversation: string): void {
    const seqs = this.seqsByConversation.get(conversation) ?? [];
    const last = seqs.length > 0 ? seqs[seqs.length - 1] : 0;
    if (last > (this.readSeq.get(conversation) ?? 0)) {
      this.readSeq.set(conversation, last);
    }
  }

  /** Returns the read marks, for saving across reloads. */
  readMarks(): Record<string, number> {
    return Object.fromEntries(this.readSeq);
  }

  /** Restores read marks saved by {@link readMarks}. */
  restoreReadMarks(marks: Record<string, number>): void {
    for (const [conversation, seq] of Object.entries(marks)) {
      if (Number.isInteger(seq) && seq > 0) {
        this.readSeq.set(conversation, seq);
      }
    }
  }

  /** Returns every conversation with its last message and unread count, latest first. */
  conversations(): ConversationSummary[] {
    const keys = new Set([
      ...this.seqsByConversation.keys(),
      ...[...this.pending.values()].map((message) => message.conversation),
    ]);
    const summaries = [...keys].map((key) => {
      const messages = this.messagesOf(key);
      const last = messages[messages.length - 1];
      const seqs = this.seqsByConversation.get(key) ?? [];
      return {
        key,
        lastText: last?.text ?? "",
        // Unsent messages sort above every stored one.
        lastSeq: last && last.seq === 0 ? Number.MAX_SAFE_INTEGER : (seqs[seqs.length - 1] ?? 0),
        unread: this.unread(key),
      };
    });
    return summaries.sort((a, b) => b.lastSeq - a.lastSeq);
  }

  private insert(message: ChatMessage): void {
    this.bySeq.set(message.seq, message);
    const seqs = this.seqsByConversation.get(message.conversation) ?? [];
    let index = seqs.length;
    while (index > 0 && seqs[index - 1] > message.seq) {
      index -= 1;
    }
    seqs.splice(index, 0, message.seq);
    this.seqsByConversation.set(message.conversation, seqs);
    this.highest = Math.max(this.highest, message.seq);
    while (this.bySeq.has(this.contiguous + 1)) {
      this.contiguous += 1;
    }
  }
}
