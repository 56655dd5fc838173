// Checks run before a request is sent, with the logic tier's rules (logic/src/service/register.rs
// and groups.rs), so the user gets a sentence that names the rule instead of INVALID_ARGUMENT.

/** Username length in characters; every allowed character is one ASCII byte. */
export const USERNAME_MIN = 3;
export const USERNAME_MAX = 32;
/** Password length in bytes of UTF-8. */
export const PASSWORD_MIN_BYTES = 8;
export const PASSWORD_MAX_BYTES = 128;
/** Group name length in Unicode code points. */
export const GROUP_NAME_MAX = 64;

const USERNAME_CHARS = /^[A-Za-z0-9_.-]*$/;
const encoder = new TextEncoder();

/** Returns why a username breaks the rules, or "" when it follows them. */
export function usernameProblem(username: string): string {
  if (username === "") {
    return "Enter a username.";
  }
  if (!USERNAME_CHARS.test(username)) {
    return "A username may only contain ASCII letters, digits, _ - and .";
  }
  if (username.length < USERNAME_MIN || username.length > USERNAME_MAX) {
    const range = `${USERNAME_MIN} to ${USERNAME_MAX}`;
    return `A username has ${range} characters, but this one has ${username.length}.`;
  }
  return "";
}

/** Returns why a password breaks the rules, or "" when it follows them. */
export function passwordProblem(password: string): string {
  const bytes = encoder.encode(password).length;
  if (bytes < PASSWORD_MIN_BYTES || bytes > PASSWORD_MAX_BYTES) {
    return (
      `A password has ${PASSWORD_MIN_BYTES} to ${PASSWORD_MAX_BYTES} bytes, ` +
      `but this one has ${bytes}. ` +
      "Letters outside ASCII take 2 to 4 bytes each."
    );
  }
  return "";
}

/** Returns the trimmed group name, or why it is not a valid name. */
export function checkGroupName(name: string): { name: string; problem: string } {
  const trimmed = name.trim();
  const length = [...trimmed].length;
  if (length === 0) {
    return { name: trimmed, problem: "Enter a group name that is not only spaces." };
  }
  if (length > GROUP_NAME_MAX) {
    return {
      name: trimmed,
      problem: `A group name has at most ${GROUP_NAME_MAX} characters, but this one has ${length}.`,
    };
  }
  return { name: trimmed, problem: "" };
}

/** Returns the trimmed username to search for, or why the search cannot match anyone. */
export function checkSearch(query: string): { username: string; problem: string } {
  const username = query.trim();
  if (username === "") {
    return { username, problem: "Enter the username to search for." };
  }
  const problem = usernameProblem(username);
  return { username, problem: problem ? `No user can be named "${username}": ${problem}` : "" };
}
