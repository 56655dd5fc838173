// The business API (LogicExtService) over gRPC-Web, served by the logic tier on the page's own
// origin. Every call carries the device's credentials in the metadata keys the logic tier
// checks: "im-user-id", "im-device-id" and "im-token".

import { Code, ConnectError, createClient } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";

import { ErrorCode } from "./gen/im/v1/packet_pb";
import { FriendState, LogicExtService } from "./gen/im/v1/logic_pb";
import type { Friend, GroupInfo, UserInfo } from "./gen/im/v1/logic_pb";
import { errorText } from "./texts";

/** The device credentials from LOGIN. Ids are decimal strings. */
export interface Credentials {
  userId: string;
  deviceId: string;
  token: string;
  username: string;
}

/** Metadata key in which the logic tier returns the ErrorCode of a failed call. */
const ERROR_CODE_KEY = "im-error-code";
const CALL_TIMEOUT_MS = 10_000;

/** A failed business call, with the ErrorCode when the server sent one. */
export class ApiError extends Error {
  constructor(
    readonly code: ErrorCode | null,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }
}

export { FriendState };
export type { Friend, GroupInfo, UserInfo };

export class BusinessApi {
  private readonly client: Client<typeof LogicExtService>;

  constructor(
    baseUrl: string,
    private readonly credentials: () => Credentials | null,
  ) {
    this.client = createClient(LogicExtService, createGrpcWebTransport({ baseUrl }));
  }

  findUser(username: string): Promise<UserInfo> {
    return this.call(() => this.client.findUser({ username }, this.options()));
  }

  getUser(userId: string): Promise<UserInfo> {
    return this.call(() => this.client.getUser({ userId: BigInt(userId) }, this.options()));
  }

  async requestFriend(userId: string): Promise<void> {
    await this.call(() => this.client.requestFriend({ userId: BigInt(userId) }, this.options()));
  }

  async acceptFriend(userId: string): Promise<void> {
    await this.call(() => this.client.acceptFriend({ userId: BigInt(userId) }, this.options()));
  }

  async listFriends(): Promise<Friend[]> {
    const reply = await this.call(() => this.client.listFriends({}, this.options()));
    return reply.friends;
  }

  createGroup(name: string, memberIds: string[]): Promise<GroupInfo> {
    const request = { name, memberIds: memberIds.map((id) => BigInt(id)) };
    return this.call(() => this.client.createGroup(request, this.options()));
  }

  addGroupMembers(groupId: string, userIds: string[]): Promise<GroupInfo> {
    const request = { groupId: BigInt(groupId), userIds: userIds.map((id) => BigInt(id)) };
    return this.call(() => this.client.addGroupMembers(request, this.options()));
  }

  async listGroups(): Promise<GroupInfo[]> {
    const reply = await this.call(() => this.client.listGroups({}, this.options()));
    return reply.groups;
  }

  private options(): { headers: Record<string, string>; timeoutMs: number } {
    const credentials = this.credentials();
    if (!credentials) {
      throw new ApiError(ErrorCode.NOT_SIGNED_IN, errorText(ErrorCode.NOT_SIGNED_IN));
    }
    return {
      headers: {
        "im-user-id": credentials.userId,
        "im-device-id": credentials.deviceId,
        "im-token": credentials.token,
      },
      timeoutMs: CALL_TIMEOUT_MS,
    };
  }

  private async call<T>(invoke: () => Promise<T>): Promise<T> {
    try {
      return await invoke();
    } catch (error) {
      throw toApiError(error);
    }
  }
}

/** Turns a Connect error into an {@link ApiError} with the server's ErrorCode, if any. */
export function toApiError(error: unknown): ApiError {
  if (error instanceof ApiError) {
    return error;
  }
  const connectError = ConnectError.from(error);
  const header = connectError.metadata.get(ERROR_CODE_KEY);
  const number = header === null ? NaN : Number.parseInt(header, 10);
  if (Number.isInteger(number) && ErrorCode[number] !== undefined) {
    const code = number as ErrorCode;
    return new ApiError(code, errorText(code, connectError.rawMessage));
  }
  if (connectError.code === Code.Unavailable || connectError.code === Code.DeadlineExceeded) {
    return new ApiError(null, "The server cannot be reached. Try again shortly.");
  }
  return new ApiError(null, `The request failed: ${connectError.rawMessage}`);
}
