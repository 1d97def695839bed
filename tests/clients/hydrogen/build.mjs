// Builds the Hydrogen page into a folder: the bundled script (esbuild), the page, and the files
// Hydrogen loads at run time (its theme, fonts and icons, olm for E2EE, the download sandbox).
//
// Usage: node build.mjs OUT_DIR   (with node_modules of tests/clients/package.json on the
// resolution path: scripts/test.sh runs it from the folder the packages are installed in)
import { cpSync, mkdirSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const out = process.argv[2];
if (!out) {
    console.error("usage: node build.mjs OUT_DIR");
    process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
// The packages sit where npm installed them (HYPHAE_JS), not beside this file.
const installed = process.env.HYPHAE_JS ?? process.cwd();
const modules = join(installed, "node_modules");
const require = createRequire(join(installed, "package.json"));
const esbuild = require("esbuild");

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "olm"), { recursive: true });
await esbuild.build({
    entryPoints: [join(here, "main.js")],
    bundle: true,
    format: "esm",
    target: "es2020",
    outfile: join(out, "main.js"),
    nodePaths: [modules],
    platform: "browser",
    // olm.js (which Hydrogen imports) asks for these only when it runs under Node.
    external: ["crypto", "fs", "path"],
    logLevel: "warning",
});
cpSync(join(here, "index.html"), join(out, "index.html"));
cpSync(join(modules, "hydrogen-view-sdk/lib-build/sw.js"), join(out, "sw.js"));
cpSync(join(modules, "hydrogen-view-sdk/asset-build/assets"), join(out, "assets"), { recursive: true });
for (const file of ["olm.js", "olm.wasm", "olm_legacy.js"]) {
    cpSync(join(modules, "@matrix-org/olm", file), join(out, "olm", file));
}
console.log(`built ${out}`);
