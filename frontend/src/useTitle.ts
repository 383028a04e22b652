import { useEffect } from "react";

/** The window's title names the page, for tabs, history and screen readers. */
export function useTitle(page: string): void {
  useEffect(() => {
    document.title = `${page} · FedAlign`;
  }, [page]);
}
