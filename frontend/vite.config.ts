/// <reference types="vitest/config" />
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The API (and its event streams) runs on :8000 during development; proxying it keeps the dashboard
// same-origin, which the session cookie (SameSite=Strict) and EventSource both rely on.
const API = process.env.FEDALIGN_API_URL ?? "http://127.0.0.1:8000";

export default defineConfig({
  plugins: [react()],
  server: {
    proxy: { "/api": { target: API, changeOrigin: false } },
  },
  preview: {
    proxy: { "/api": { target: API, changeOrigin: false } },
  },
  build: {
    outDir: "dist",
    sourcemap: true,
    // ECharts (with zrender) is most of the code and changes least; its own chunk stays cached across
    // releases and loads only with the chart pages. Minified it is ~540 kB, above Vite's 500 kB warning.
    chunkSizeWarningLimit: 600,
    rolldownOptions: {
      output: {
        codeSplitting: { groups: [{ name: "echarts", test: /node_modules[\\/](echarts|zrender)[\\/]/ }] },
      },
    },
  },
  test: {
    environment: "jsdom",
    include: ["tests/**/*.test.{ts,tsx}"],
    setupFiles: ["tests/setup.ts"],
    css: false,
  },
});
