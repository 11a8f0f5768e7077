// The default main of the package `cli_pkg`: `ditask --package tests/_fixtures/cli_pkg` without `--main`.
import { task } from "../../../mod.ts";

/** Print which main ran. */
export function main(): void {
  console.log(`default main of cli_pkg on node ${task.router.nodeId}`);
}
