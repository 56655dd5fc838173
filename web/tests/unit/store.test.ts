import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";

import { ConversationType, MessageSchema } from "../../src/gen/im/v1/packet_pb";
import type { Message } from "../../src/gen/im/v1/packet_pb";
import { conversationKey, isValidId, MessageStore, parseConversationKey } from "../../src/store";

const SELF = "1";
const PEER = "2";
const OTHER = "3";
const PEER_CHAT = "user:2";

function direct(seq: number, from: string, to: string, text: string, clientMsgId = ""): Message {
  return create(MessageSchema, {
    seq: BigInt(seq),
    messageId: BigInt(1000 + seq),
    senderUserId: BigInt(from),
    conversationType: ConversationType.USER,
    receiverId: BigInt(to),
    content: new TextEncoder().encode(text),
    clientMsgId,
    sentAtMs: BigInt(seq),
  });
}

function group(seq: number, from: string, groupId: string, text: string): Message {
  return create(MessageSchema, {
    seq: BigInt(seq),
    senderUserId: BigInt(from),
    conversationType: ConversationType.GROUP,
    receiverId: BigInt(groupId),
    content: new TextEncoder().encode(text),
  });
}

function texts(store: MessageStore, conversation: string): string[] {
  return store.messagesOf(conversation).map((message) => message.text);
}

describe("ordering", () => {
  it("shows messages in seq order whatever the arrival order", () => {
    const store = new MessageStore(SELF);
    store.add([direct(3, PEER, SELF, "c"), direct(1, PEER, SELF, "a")]);
    store.add([direct(2, SELF, PEER, "b")]);
    expect(texts(store, PEER_CHAT)).toEqual(["a", "b", "c"]);
    expect(store.messagesOf(PEER_CHAT).map((message) => message.seq)).toEqual([1, 2, 3]);
    expect(store.heldSeq).toBe(3);
  });

  it("files direct and group messages under their conversations", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, SELF, PEER, "to peer"), direct(2, OTHER, SELF, "from other"), group(3, PEER, "9", "in group")]);
    expect(texts(store, "user:2")).toEqual(["to peer"]);
    expect(texts(store, "user:3")).toEqual(["from other"]);
    expect(texts(store, "group:9")).toEqual(["in group"]);
  });

  it("lists conversations latest first", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "old"), direct(2, OTHER, SELF, "new")]);
    expect(store.conversations().map((summary) => summary.key)).toEqual(["user:3", "user:2"]);
    expect(store.conversations()[0].lastText).toBe("new");
  });
});

describe("de-duplication", () => {
  it("drops a seq it already holds", () => {
    const store = new MessageStore(SELF);
    const first = store.add([direct(1, PEER, SELF, "a"), direct(2, PEER, SELF, "b")]);
    const again = store.add([direct(2, PEER, SELF, "b"), direct(1, PEER, SELF, "a")]);
    expect(first.added).toBe(2);
    expect(again.added).toBe(0);
    expect(again.duplicates).toBe(2);
    expect(texts(store, PEER_CHAT)).toEqual(["a", "b"]);
  });

  it("replaces a pending message by the synced copy with the same client id", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "mine", "c-1");
    store.add([direct(1, SELF, PEER, "mine", "c-1")]);
    expect(texts(store, PEER_CHAT)).toEqual(["mine"]);
    expect(store.pendingMessages()).toEqual([]);
    const late = store.confirm("c-1", 1, "1001", 1);
    expect(late.added).toBe(0);
    expect(texts(store, PEER_CHAT)).toEqual(["mine"]);
  });

  it("does not store a confirmed seq twice", () => {
    const store = new MessageStore(SELF);
    store.add([direct(4, SELF, PEER, "mine", "other-device")]);
    store.addPending(PEER_CHAT, "mine", "c-2");
    const result = store.confirm("c-2", 4, "1004", 4);
    expect(result.duplicates).toBe(1);
    expect(store.messagesOf(PEER_CHAT).length).toBe(1);
  });
});

describe("pending sends", () => {
  it("shows a pending message after the stored ones until its reply", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "hi")]);
    store.addPending(PEER_CHAT, "hello", "c-1");
    expect(store.messagesOf(PEER_CHAT).map((message) => message.state)).toEqual(["stored", "pending"]);
    const result = store.confirm("c-1", 2, "1002", 2);
    expect(result.added).toBe(1);
    const messages = store.messagesOf(PEER_CHAT);
    expect(messages.map((message) => message.state)).toEqual(["stored", "stored"]);
    expect(messages[1].seq).toBe(2);
    expect(store.heldSeq).toBe(2);
  });

  it("keeps a failed message with its error and does not resend it", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "nope", "c-1");
    store.fail("c-1", "You can only message friends.");
    const [message] = store.messagesOf(PEER_CHAT);
    expect(message.state).toBe("failed");
    expect(message.error).toBe("You can only message friends.");
    expect(store.pendingMessages()).toEqual([]);
  });
});

describe("unsent message order", () => {
  it("keeps a failed message above messages stored after it", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a")]);
    store.addPending(PEER_CHAT, "failed", "c-1");
    store.fail("c-1", "The connection closed before the server confirmed it.");
    store.addPending(PEER_CHAT, "later", "c-2");
    store.confirm("c-2", 2, "1002", 2);
    store.add([direct(3, PEER, SELF, "reply")]);
    expect(texts(store, PEER_CHAT)).toEqual(["a", "failed", "later", "reply"]);
  });

  it("keeps unsent messages in the order they were written", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "first", "c-1");
    store.add([direct(1, PEER, SELF, "pushed")]);
    store.addPending(PEER_CHAT, "second", "c-2");
    store.addPending(PEER_CHAT, "third", "c-3");
    store.fail("c-2", "timed out");
    expect(texts(store, PEER_CHAT)).toEqual(["first", "pushed", "second", "third"]);
  });

  it("places an unsent message before a gap filled later", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a"), direct(3, PEER, SELF, "c")]);
    store.addPending(PEER_CHAT, "mine", "c-1");
    store.add([direct(2, PEER, SELF, "b"), direct(4, PEER, SELF, "d")]);
    expect(texts(store, PEER_CHAT)).toEqual(["a", "b", "c", "mine", "d"]);
  });

  it("retry turns a failed message pending in place", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "again", "c-1");
    store.fail("c-1", "timed out");
    store.add([direct(1, PEER, SELF, "after")]);
    expect(store.retry("c-1")).toBe(true);
    const messages = store.messagesOf(PEER_CHAT);
    expect(messages.map((message) => message.text)).toEqual(["again", "after"]);
    expect(messages[0].state).toBe("pending");
    expect(messages[0].error).toBe("");
    expect(messages[0].clientMsgId).toBe("c-1");
    expect(store.pendingMessages().map((message) => message.clientMsgId)).toEqual(["c-1"]);
  });

  it("retry and remove leave pending messages alone", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "on its way", "c-1");
    expect(store.retry("c-1")).toBe(false);
    expect(store.remove("c-1")).toBe(false);
    expect(store.retry("unknown")).toBe(false);
    expect(texts(store, PEER_CHAT)).toEqual(["on its way"]);
  });

  it("remove deletes a failed message and its conversation entry", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "gone", "c-1");
    store.fail("c-1", "That user or group does not exist.");
    expect(store.remove("c-1")).toBe(true);
    expect(texts(store, PEER_CHAT)).toEqual([]);
    expect(store.conversations()).toEqual([]);
  });

  it("a retried message stored by the server is shown once", () => {
    const store = new MessageStore(SELF);
    store.addPending(PEER_CHAT, "once", "c-1");
    store.fail("c-1", "timed out");
    store.retry("c-1");
    // The first SEND was stored after all, and SYNC brings it before the retry's reply.
    store.add([direct(1, SELF, PEER, "once", "c-1")]);
    expect(store.confirm("c-1", 1, "1001", 1).added).toBe(0);
    expect(texts(store, PEER_CHAT)).toEqual(["once"]);
  });
});

describe("gap detection", () => {
  it("reports a gap until the missing seq arrives", () => {
    const store = new MessageStore(SELF);
    expect(store.add([direct(1, PEER, SELF, "a")]).gap).toBe(false);
    const jump = store.add([direct(3, PEER, SELF, "c")]);
    expect(jump.gap).toBe(true);
    expect(store.heldSeq).toBe(1);
    expect(store.hasGap).toBe(true);
    const filled = store.add([direct(2, PEER, SELF, "b")]);
    expect(filled.gap).toBe(false);
    expect(store.heldSeq).toBe(3);
  });

  it("reports a gap when the first push is not seq 1", () => {
    const store = new MessageStore(SELF);
    expect(store.add([direct(5, PEER, SELF, "late")]).gap).toBe(true);
    expect(store.heldSeq).toBe(0);
  });

  it("moves past seqs that a SYNC page passes over", () => {
    const store = new MessageStore(SELF);
    // Seqs 1..=4 and 6 were deleted past the retention.
    const page = store.addSyncPage(0, [direct(5, PEER, SELF, "e"), direct(7, PEER, SELF, "g")]);
    expect(page.gap).toBe(false);
    expect(store.heldSeq).toBe(7);
    expect(texts(store, PEER_CHAT)).toEqual(["e", "g"]);
  });

  it("moves past deleted seqs behind a held push", () => {
    const store = new MessageStore(SELF);
    store.add([direct(2, PEER, SELF, "b")]);
    store.addSyncPage(0, [direct(4, PEER, SELF, "d")]);
    expect(store.heldSeq).toBe(4);
    expect(store.hasGap).toBe(false);
    expect(texts(store, PEER_CHAT)).toEqual(["b", "d"]);
  });

  it("keeps a gap below a page requested above the held seq", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a")]);
    store.addSyncPage(3, [direct(4, PEER, SELF, "d")]);
    expect(store.heldSeq).toBe(1);
    expect(store.hasGap).toBe(true);
  });

  it("a SEND reply can fill the gap below a push", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a")]);
    store.addPending(PEER_CHAT, "b", "c-1");
    expect(store.add([direct(3, PEER, SELF, "c")]).gap).toBe(true);
    expect(store.confirm("c-1", 2, "1002", 2).gap).toBe(false);
    expect(store.heldSeq).toBe(3);
  });
});

describe("unread counts", () => {
  it("counts messages from others above the read mark", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a"), direct(2, SELF, PEER, "b"), direct(3, PEER, SELF, "c")]);
    expect(store.unread(PEER_CHAT)).toBe(2);
    store.markRead(PEER_CHAT);
    expect(store.unread(PEER_CHAT)).toBe(0);
    store.add([direct(4, PEER, SELF, "d")]);
    expect(store.unread(PEER_CHAT)).toBe(1);
    expect(store.conversations()[0].unread).toBe(1);
  });

  it("keeps counts per conversation", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a"), group(2, OTHER, "9", "g1"), group(3, PEER, "9", "g2")]);
    expect(store.unread(PEER_CHAT)).toBe(1);
    expect(store.unread("group:9")).toBe(2);
    store.markRead("group:9");
    expect(store.unread("group:9")).toBe(0);
    expect(store.unread(PEER_CHAT)).toBe(1);
  });

  it("restores saved read marks", () => {
    const first = new MessageStore(SELF);
    first.add([direct(1, PEER, SELF, "a"), direct(2, PEER, SELF, "b")]);
    first.markRead(PEER_CHAT);
    const marks = first.readMarks();

    const reloaded = new MessageStore(SELF);
    reloaded.restoreReadMarks(marks);
    reloaded.add([direct(1, PEER, SELF, "a"), direct(2, PEER, SELF, "b"), direct(3, PEER, SELF, "c")]);
    expect(reloaded.unread(PEER_CHAT)).toBe(1);
  });

  it("reset forgets everything", () => {
    const store = new MessageStore(SELF);
    store.add([direct(1, PEER, SELF, "a")]);
    store.reset("7");
    expect(store.heldSeq).toBe(0);
    expect(store.conversations()).toEqual([]);
  });
});

describe("conversation keys", () => {
  it("round-trips user and group keys", () => {
    expect(conversationKey(ConversationType.USER, 5n)).toBe("user:5");
    expect(conversationKey(ConversationType.GROUP, "6")).toBe("group:6");
    expect(parseConversationKey("group:6")).toEqual({ type: ConversationType.GROUP, id: "6" });
    expect(parseConversationKey("user:x")).toBeUndefined();
  });

  it("rejects ids outside uint64", () => {
    expect(parseConversationKey("user:999999999999999999999")).toBeUndefined();
    expect(parseConversationKey("user:18446744073709551616")).toBeUndefined();
    expect(parseConversationKey("user:0")).toBeUndefined();
    expect(parseConversationKey("user:007")).toBeUndefined();
    expect(parseConversationKey("group:18446744073709551615")?.id).toBe("18446744073709551615");
  });

  it("accepts only positive uint64 ids", () => {
    for (const id of ["1", "42", "18446744073709551615"]) {
      expect(isValidId(id), id).toBe(true);
    }
    for (const id of ["", "0", "-1", "1.5", "01", "18446744073709551616", "9".repeat(25), "1e3"]) {
      expect(isValidId(id), id).toBe(false);
    }
  });
});
