import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// The desktop shell loads `dist/` (see src-tauri/tauri.conf.json).
export default defineConfig({
  plugins: [svelte()],
  clearScreen: false,
  server: { port: 5173, strictPort: true },
  build: { target: "es2021", outDir: "dist", emptyOutDir: true },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
