/**
 * The version of ditask, the same as `version` in `package.json` and `deno.json`. A constant (not
 * read from a manifest at run time) so that it is right from the repository, from the compiled
 * `dist/` of the npm package and from a Deno import alike; `tests/cli.test.ts` fails when it
 * drifts from either manifest.
 *
 * @example Print the version
 * ```ts
 * import { VERSION } from "./lib/version.ts";
 * console.log(`ditask ${VERSION}`);
 * ```
 */
export const VERSION = "0.1.0";
