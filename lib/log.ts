import { getEnv } from "./runtime.ts";

/** Log levels, quietest first. */
export const LOG_LEVELS = ["silent", "error", "warn", "info", "debug"] as const;
/** One of {@link LOG_LEVELS}. */
export type LogLevel = (typeof LOG_LEVELS)[number];

function levelFromEnv(): number {
  const v = (getEnv("DITASK_LOG") ?? "warn").toLowerCase();
  const i = LOG_LEVELS.indexOf(v as LogLevel);
  return i < 0 ? 2 : i;
}

let level = levelFromEnv();

/** Set the log level (the environment variable `DITASK_LOG` sets the initial one; default `warn`). */
export function setLogLevel(l: LogLevel): void {
  level = LOG_LEVELS.indexOf(l);
}

function write(at: number, tag: string, args: unknown[]): void {
  if (level >= at) console.error(`[ditask ${tag}]`, ...args);
}

/** ditask's own diagnostics, on stderr, filtered by level. */
export const log = {
  error: (...a: unknown[]): void => write(1, "error", a),
  warn: (...a: unknown[]): void => write(2, "warn", a),
  info: (...a: unknown[]): void => write(3, "info", a),
  debug: (...a: unknown[]): void => write(4, "debug", a),
  enabled: (l: LogLevel): boolean => level >= LOG_LEVELS.indexOf(l),
};
