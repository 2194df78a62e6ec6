using System.Diagnostics;
using Spectre.Console;
using static Treaty.Cli.DemoScenarios;

namespace Treaty.Cli.Experiments;

/// <summary>
/// 3PC does not block: the coordinator is SIGKILLed after every participant acknowledged
/// preCommit (its doCommits refused meanwhile), and stays down. Each participant's in-doubt
/// resolver asks, cannot reach it, and applies the termination rule: it acknowledged preCommit,
/// so it commits on its own. The restarted coordinator's doCommits are then replays.
/// </summary>
internal static class ThreePhaseCommitExperiment
{
    public static Experiment Definition { get; } = new("3pc-coordinator-dies",
        "3PC survives its coordinator's death: after preCommit the participants commit on their own.", RunAsync);

    private static async Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken ct)
    {
        var env = context.Env;
        var scenarios = new DemoScenarios(env, null, null);
        foreach (var (service, url) in new[] { ("order", env.OrderUrl), ("payment", env.PaymentUrl), ("inventory", env.InventoryUrl) })
        {
            await env.SetFaultAsync(url, $"/3pc/{service}/doCommit", failTimes: -1, status: 503, delayMs: 0, ct);
        }

        var balance = await scenarios.WalletAsync("alice", ct);
        var stock = await scenarios.StockAsync("book", ct);
        var (orderId, gid) = await scenarios.CheckoutAsync("alice", [("book", 1)], ct, "3pc");
        var preCommitted = await scenarios.PollAsync(gid, tx => Str(tx, "phase") == "doCommit", ct);
        var clock = Stopwatch.StartNew();
        env.KillCoordinator();

        // Down for good, as far as the participants know: wait for them to decide alone.
        var patience = env.InDoubtAfter is { } after ? after * 4 + TimeSpan.FromSeconds(10) : TimeSpan.FromSeconds(150);
        var order = await env.GetJsonAsync($"{env.OrderUrl}/orders/{orderId}", ct);
        var sold = stock;
        while (clock.Elapsed < patience)
        {
            order = await env.GetJsonAsync($"{env.OrderUrl}/orders/{orderId}", ct);
            sold = await scenarios.StockAsync("book", ct);
            if (Str(order, "status") == "CONFIRMED" && sold.Sold == stock.Sold + 1 && sold.Held == stock.Held)
            {
                break;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(100), TimeProvider.System, ct);
        }

        var alone = clock.Elapsed;
        var charged = balance - await scenarios.WalletAsync("alice", ct);
        var heldWhileDown = Dec(await env.GetJsonAsync($"{env.PaymentUrl}/wallets/alice", ct), "held");
        await env.ClearFaultsAsync(ct);
        await env.StartCoordinatorAsync(ct);
        var tx = await scenarios.WaitTerminalAsync(gid, ct);
        var table = new Table().Border(TableBorder.Rounded).Title("The coordinator SIGKILLed after preCommit, not restarted until the participants decided");
        table.AddColumn("participant");
        table.AddColumn("while the coordinator was down");
        table.AddRow("order", $"{Str(order, "status")}");
        table.AddRow("payment", $"charged {charged:0.00}, held {heldWhileDown:0.00}");
        table.AddRow("inventory", $"book sold +{sold.Sold - stock.Sold}, held {sold.Held - stock.Held:+0;-0;0}");
        table.AddRow("(after the restart)", $"transaction {Str(tx, "status")}; its doCommits were replays");
        var checks = new List<Check>
        {
            new("every participant acknowledged preCommit before the kill", preCommitted),
            Expect("order confirmed with the coordinator down", Str(order, "status"), "CONFIRMED"),
            Expect("payment captured with the coordinator down", charged, 25.00m),
            Expect("book sold with the coordinator down", sold.Sold - stock.Sold, 1),
            Expect("after the restart the transaction is committed", Str(tx, "status"), "committed"),
            await scenarios.LedgerOnceAsync("alice", gid, expectRefund: false, ct),
        };
        return new ExperimentResult(Definition.Name,
            $"with the coordinator dead after preCommit, the three participants committed on their own {alone.TotalSeconds:0.0} s after the kill (their timeout: {env.InDoubtAfter?.TotalSeconds ?? 30:0} s)",
            checks, table);
    }
}
