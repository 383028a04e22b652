/** Lets the browser download a same-origin URL (the session cookie authenticates it) without leaving the
 * page: the server answers with Content-Disposition: attachment. */
export function download(url: string): void {
  const link = document.createElement("a");
  link.href = url;
  link.download = "";
  document.body.append(link);
  link.click();
  link.remove();
}
