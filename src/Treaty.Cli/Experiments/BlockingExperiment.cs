using System.Diagnostics;
using System.Text.Json.Nodes;
using Spectre.Console;
using Treaty.Client;
using static Treaty.Cli.DemoScenarios;

namespace Treaty.Cli.Experiments;

/// <summary>
/// 2PC blocks: a participant that voted YES holds its locks until it hears the outcome, and only
/// the coordinator can tell it. The coordinator is SIGKILLed after every vote was YES (its commits
/// refused meanwhile, so none lands); a competing order for the same customer and stock, run as a
/// saga by another coordinator, is refused again and again while the locks are held; the restarted coordinator
/// finishes the transaction and the locks go. Beside it, the same under TCC: its try holds a
/// quantity, not the row, so the competing order goes through at once.
/// </summary>
internal static class BlockingExperiment
{
    private static readonly TimeSpan Outage = TimeSpan.FromSeconds(4);

    public static Experiment Definition { get; } = new("2pc-blocking",
        "2PC blocks and holds its locks when its coordinator dies.", RunAsync);

    private static async Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken ct)
    {
        var env = context.Env;
        var scenarios = new DemoScenarios(env, null, null);
        var table = new Table().Border(TableBorder.Rounded).Title($"The coordinator killed after the votes, down {Outage.TotalSeconds:0} s; a competing order for a book meanwhile");
        table.AddColumn("protocol");
        table.AddColumn("book row while down");
        table.AddColumn("why refused");
        table.AddColumn(new TableColumn("competing orders refused").RightAligned());
        table.AddColumn(new TableColumn("first competing commit").RightAligned());
        table.AddColumn(new TableColumn("locks held").RightAligned());
        table.AddColumn("outcome");
        var checks = new List<Check>();

        // Another coordinator (another application's) on the same services: it is up while ours is down.
        var url = $"http://127.0.0.1:{ChildProcess.FreePort()}";
        using var other = ChildProcess.StartDotnet("coordinator-b", typeof(ChildProcess).Assembly.Location,
            ["serve", "--urls", url, "--data-dir", Path.Combine(env.Root, "coordinator-b")],
            new Dictionary<string, string> { [DemoEnvironment.CallbackSecretVariable] = env.CallbackSecret });
        await other.WaitHealthyAsync(env.Http, url + "/healthz", TimeSpan.FromSeconds(60), ct);
        using var otherClient = new TreatyClient(new Uri(url));

        foreach (var protocol in new[] { "2pc", "tcc" })
        {
            var outcomeOp = protocol == "2pc" ? "commit" : "confirm";
            // Every participant refuses the outcome for now: the votes are in, the decision is taken, nothing lands.
            foreach (var (service, serviceUrl) in new[] { ("order", env.OrderUrl), ("payment", env.PaymentUrl), ("inventory", env.InventoryUrl) })
            {
                await env.SetFaultAsync(serviceUrl, $"/{protocol}/{service}/{outcomeOp}", failTimes: -1, status: 503, delayMs: 0, ct);
            }

            var (orderId, gid) = await scenarios.CheckoutAsync("alice", [("book", 1)], ct, protocol);
            var voted = await scenarios.PollAsync(gid, tx => Str(tx, "phase") == (protocol == "2pc" ? "commit" : "confirm"), ct);
            var lockedAt = Stopwatch.StartNew();
            var killedPid = env.CoordinatorPid;
            env.KillCoordinator();
            var row = await env.GetJsonAsync($"{env.InventoryUrl}/stock/book", ct);
            var rowText = $"held {row["held"]}, locked by {Str(row, "lockedBy") ?? "nobody"}";

            // The competing order, through the other coordinator, every 250 ms while ours is down.
            var refused = 0;
            string? why = null;
            TimeSpan? firstCommit = null;
            var down = Stopwatch.StartNew();
            while (down.Elapsed < Outage && firstCommit is null)
            {
                var (committed, reason) = await CompeteAsync(env, otherClient, ct);
                if (committed)
                {
                    firstCommit = lockedAt.Elapsed;
                }
                else
                {
                    refused++;
                    why ??= reason;
                }

                await Task.Delay(TimeSpan.FromMilliseconds(250), TimeProvider.System, ct);
            }

            await env.ClearFaultsAsync(ct);
            await env.StartCoordinatorAsync(ct);
            var tx = await scenarios.WaitTerminalAsync(gid, ct);
            var order = await scenarios.OrderAsync(orderId, ct);
            TimeSpan? released = null;
            while (released is null && lockedAt.Elapsed < TimeSpan.FromSeconds(60))
            {
                if (Str(await env.GetJsonAsync($"{env.InventoryUrl}/stock/book", ct), "lockedBy") is null)
                {
                    released = lockedAt.Elapsed;
                }
                else
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(25), TimeProvider.System, ct);
                }
            }

            while (firstCommit is null && lockedAt.Elapsed < TimeSpan.FromSeconds(60))
            {
                if ((await CompeteAsync(env, otherClient, ct)).Committed)
                {
                    firstCommit = lockedAt.Elapsed;
                }
                else
                {
                    refused++;
                    await Task.Delay(TimeSpan.FromMilliseconds(100), TimeProvider.System, ct);
                }
            }

            table.AddRow(protocol, rowText, why is null ? "-" : Shorten(why), $"{refused}", Ms(firstCommit), protocol == "2pc" ? Ms(released) : "none (escrow)",
                $"{Str(tx, "status")}, order {Str(order, "status")}");
            checks.Add(new Check($"{protocol}: coordinator SIGKILLed after every vote was YES", voted, $"pid {killedPid}"));
            checks.Add(Expect($"{protocol}: committed after the restart", Str(tx, "status"), "committed"));
            checks.Add(Expect($"{protocol}: order confirmed", Str(order, "status"), "CONFIRMED"));
            if (protocol == "2pc")
            {
                checks.Add(new Check("2pc: the book row stayed locked while the coordinator was down", Str(row, "lockedBy") == gid, rowText));
                checks.Add(new Check("2pc: every competing order was refused until the restart", refused >= 3 && firstCommit > Outage, $"{refused} refused, first commit at {Ms(firstCommit)}"));
                checks.Add(new Check("2pc: the locks went once the restarted coordinator committed", released is not null));
            }
            else
            {
                checks.Add(new Check("tcc: the row was never locked; the competing order went through at once", Str(row, "lockedBy") is null && refused == 0, $"{refused} refused"));
            }
        }

        return new ExperimentResult(Definition.Name,
            $"with its coordinator down {Outage.TotalSeconds:0} s, 2PC kept the book row locked and refused every competing order; TCC's hold let them through", checks, table);
    }

    /// <summary>
    /// Alice buys a book through the other coordinator, as a saga (all three services take part,
    /// so the Shop stays consistent); true when it committed, else why it was refused.
    /// </summary>
    private static async Task<(bool Committed, string? Reason)> CompeteAsync(DemoEnvironment env, TreatyClient other, CancellationToken ct)
    {
        var orderId = "competing-" + Guid.NewGuid().ToString("N")[..12];
        var payload = new JsonObject
        {
            ["orderId"] = orderId,
            ["customerId"] = "alice",
            ["items"] = new JsonArray(new JsonObject { ["sku"] = "book", ["qty"] = 1 }),
            ["amount"] = 25.00m,
        };
        using var document = System.Text.Json.JsonDocument.Parse(payload.ToJsonString());
        var view = await other.Saga("b-" + orderId).WithPayload(document.RootElement)
            .Step("order", $"{env.OrderUrl}/saga/order/create", $"{env.OrderUrl}/saga/order/cancel")
            .Step("payment", $"{env.PaymentUrl}/saga/payment/reserve", $"{env.PaymentUrl}/saga/payment/refund")
            .Step("inventory", $"{env.InventoryUrl}/saga/inventory/reserve", $"{env.InventoryUrl}/saga/inventory/release")
            .Step("confirm", $"{env.OrderUrl}/saga/order/confirm", pivot: true)
            .Step("stock", $"{env.InventoryUrl}/saga/inventory/commit")
            .SubmitAsync(TimeSpan.FromSeconds(10), ct);
        // Its order leaves PENDING too, so the Shop's invariants hold at the end.
        await new DemoScenarios(env, null, null).OrderAsync(orderId, ct);
        return (view.Status == "committed", view.Reason);
    }

    private static string Shorten(string text) => text.Length <= 90 ? text : text[..87] + "…";

    private static string Ms(TimeSpan? t) => t is { } v ? $"{v.TotalMilliseconds:0} ms" : "never";
}
