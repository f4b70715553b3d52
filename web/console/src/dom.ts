/** A few DOM helpers: elements from a tag, attributes and children; times for people. */

import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";

type Attr = string | number | boolean | undefined | ((event: Event) => void);
type Child = Node | string | null | undefined | false;

/** `<tag attrs>children</tag>`; `on<event>` attributes become listeners, `false`/undefined are left out. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, Attr> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (value === true) el.setAttribute(name, "");
    else if (value !== undefined && value !== false) el.setAttribute(name, String(value));
  }
  el.append(...children.filter((c): c is Node | string => c !== null && c !== undefined && c !== false));
  return el;
}

/** "12:03:04" today, else "2026-12-05 12:03"; "" when unset. */
export function when(ts: Timestamp | undefined): string {
  if (!ts) return "";
  const d = timestampDate(ts);
  const pad = (n: number): string => String(n).padStart(2, "0");
  const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return d.toDateString() === new Date().toDateString()
    ? time
    : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time.slice(0, 5)}`;
}

/** What a view gives the router: its element and how to stop its timers and streams. */
export interface View {
  el: HTMLElement;
  dispose(): void;
}
