// The error details Tether attaches to a failed call, for the client and the worker alike.
//
// Every error carries a google.rpc.ErrorInfo whose reason (SESSION_NOT_FOUND, LEASE_LOST, ...)
// is the stable thing to branch on; the message is for people. INVALID_ARGUMENT also carries a
// google.rpc.BadRequest naming the fields. gen/ts holds only tether.v1, not google.rpc, so the
// few fields needed are read straight off the wire: ErrorInfo{1 reason, 2 domain, 3 metadata},
// BadRequest{1 repeated FieldViolation{1 field, 2 description}}.

import { BinaryReader } from "@bufbuild/protobuf/wire";
import { ConnectError } from "@connectrpc/connect";

/** The payloads of the details of type `typeName` (with or without a type URL prefix). */
function details(error: unknown, typeName: string): Uint8Array[] {
  const found: Uint8Array[] = [];
  if (!(error instanceof ConnectError)) return found;
  for (const detail of error.details) {
    if ("type" in detail && detail.type.replace(/^.*\//, "") === typeName) found.push(detail.value);
  }
  return found;
}

/** Calls `onField` for each field of one encoded message; a malformed message ends the walk. */
function walk(bytes: Uint8Array, onField: (field: number, reader: BinaryReader) => boolean): void {
  const reader = new BinaryReader(bytes);
  try {
    while (reader.pos < reader.len) {
      const [field, wireType] = reader.tag();
      if (!onField(field, reader)) reader.skip(wireType);
    }
  } catch {
    // Not what the server sends: keep what was read.
  }
}

/** The server's google.rpc.ErrorInfo, or undefined when the error carries none. */
export function errorInfo(error: unknown): { reason: string; domain: string } | undefined {
  const [payload] = details(error, "google.rpc.ErrorInfo");
  if (payload === undefined) return undefined;
  const info = { reason: "", domain: "" };
  walk(payload, (field, reader) => {
    if (field === 1) info.reason = reader.string();
    else if (field === 2) info.domain = reader.string();
    else return false;
    return true;
  });
  return info;
}

/** The fields a google.rpc.BadRequest names, as "field: description". */
export function fieldViolations(error: unknown): string[] {
  const found: string[] = [];
  for (const payload of details(error, "google.rpc.BadRequest")) {
    walk(payload, (field, outer) => {
      if (field !== 1) return false;
      let name = "";
      let description = "";
      walk(outer.bytes(), (f, inner) => {
        if (f === 1) name = inner.string();
        else if (f === 2) description = inner.string();
        else return false;
        return true;
      });
      found.push(`${name}: ${description}`);
      return true;
    });
  }
  return found;
}
