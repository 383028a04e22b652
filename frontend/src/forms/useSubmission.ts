import { type FormEvent, useState } from "react";
import { errorMessage } from "../api/client";

/** A form's submit handler: sends once at a time and only while the form is valid; a rejection's message
 * becomes `failure`, shown on the form. */
export function useSubmission(valid: boolean, send: () => Promise<void>) {
  const [pending, setPending] = useState(false);
  const [failure, setFailure] = useState<string | null>(null);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    if (!valid || pending) return;
    setPending(true);
    setFailure(null);
    try {
      await send();
    } catch (error) {
      setFailure(errorMessage(error));
    } finally {
      setPending(false);
    }
  };
  return { pending, failure, submit };
}
