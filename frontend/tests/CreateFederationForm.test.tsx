import { fireEvent, render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";
import { CreateFederationForm } from "../src/components/CreateFederationForm";

describe("the create form", () => {
  it("starts from the schema's defaults", () => {
    render(<CreateFederationForm onSubmit={vi.fn()} />);
    expect(screen.getByLabelText("Rounds")).toHaveValue("10");
    expect(screen.getByLabelText("Algorithm")).toHaveValue("fedalign");
    expect(screen.getByLabelText("lr")).toHaveValue("0.01");
  });

  it("suggests the built-in architectures and takes any other name", () => {
    render(<CreateFederationForm onSubmit={vi.fn()} />);
    const architecture = screen.getByLabelText("Architecture");
    const list = document.getElementById(architecture.getAttribute("list")!)!;
    const offered = [...list.querySelectorAll("option")].map((o) => o.getAttribute("value"));
    expect(offered).toEqual(expect.arrayContaining(["digits_cnn", "mlp", "resnet18", "mobilenet_v3_small"]));
    fireEvent.change(architecture, { target: { value: "mypackage.models:factory" } });
    expect(architecture).toHaveValue("mypackage.models:factory");
    expect(architecture).not.toHaveAttribute("aria-invalid");
  });

  it("shows an out-of-range message while typing and does not submit", async () => {
    const submit = vi.fn();
    const user = userEvent.setup();
    render(<CreateFederationForm onSubmit={submit} />);
    const batch = screen.getByLabelText("batch_size");
    await user.clear(batch);
    await user.type(batch, "5000");

    expect(
      screen.getByText("batch_size must be at least 1 and at most 4096; 5000 is out of range."),
    ).toBeVisible();
    expect(batch).toHaveAttribute("aria-invalid", "true");
    const create = screen.getByRole("button", { name: "Create federation" });
    expect(create).toBeDisabled();
    fireEvent.submit(create.closest("form")!);
    expect(submit).not.toHaveBeenCalled();
  });

  it("submits the typed body once the values are valid", async () => {
    const submit = vi.fn().mockResolvedValue(undefined);
    const user = userEvent.setup();
    render(<CreateFederationForm onSubmit={submit} />);
    await user.clear(screen.getByLabelText("Name"));
    await user.type(screen.getByLabelText("Name"), "mnistm run");
    await user.selectOptions(screen.getByLabelText("Algorithm"), "fedavg");
    await user.click(screen.getByRole("button", { name: "Create federation" }));

    expect(submit).toHaveBeenCalledOnce();
    expect(submit.mock.calls[0]![0]).toMatchObject({
      name: "mnistm run",
      algorithm: "fedavg",
      rounds: 10,
      hyperparameters: { batch_size: 64, lr: 0.01 },
    });
  });

  it("shows the server's refusal", async () => {
    const user = userEvent.setup();
    render(<CreateFederationForm onSubmit={() => Promise.reject(new Error("rounds: too many"))} />);
    await user.click(screen.getByRole("button", { name: "Create federation" }));
    expect(await screen.findByRole("alert")).toHaveTextContent("rounds: too many");
  });
});
