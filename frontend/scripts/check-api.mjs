// Fails when src/api/schema.ts is not what openapi-typescript makes of the committed openapi.json,
// i.e. someone edited one without regenerating the other (`npm run gen:api`). `--enum-values` also
// exports each enum's values as an array (the live stream's EVENT_TYPES come from one).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "fedalign-api-"));
const fresh = join(dir, "schema.ts");
try {
  execFileSync(
    join("node_modules", ".bin", "openapi-typescript"),
    ["openapi.json", "--enum-values", "-o", fresh],
    {
      stdio: ["ignore", "ignore", "inherit"],
    },
  );
  if (readFileSync(fresh, "utf8") !== readFileSync(join("src", "api", "schema.ts"), "utf8")) {
    console.error(
      "src/api/schema.ts differs from what openapi.json generates; run `npm run gen:api` " +
        "(or `npx openapi-typescript openapi.json --enum-values -o src/api/schema.ts`) and commit both files.",
    );
    process.exit(1);
  }
  console.log("src/api/schema.ts matches openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
