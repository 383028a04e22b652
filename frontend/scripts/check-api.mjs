// Fails when src/api/schema.d.ts is not what openapi-typescript makes of the committed openapi.json,
// i.e. someone edited one without regenerating the other (`npm run gen:api`).
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "fedalign-api-"));
const fresh = join(dir, "schema.d.ts");
try {
  execFileSync(join("node_modules", ".bin", "openapi-typescript"), ["openapi.json", "-o", fresh], {
    stdio: ["ignore", "ignore", "inherit"],
  });
  if (readFileSync(fresh, "utf8") !== readFileSync(join("src", "api", "schema.d.ts"), "utf8")) {
    console.error(
      "src/api/schema.d.ts differs from what openapi.json generates; run `npm run gen:api` " +
        "(or `npx openapi-typescript openapi.json -o src/api/schema.d.ts`) and commit both files.",
    );
    process.exit(1);
  }
  console.log("src/api/schema.d.ts matches openapi.json");
} finally {
  rmSync(dir, { recursive: true, force: true });
}
