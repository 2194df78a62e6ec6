using System.Text.Json.Nodes;
using Spectre.Console;
using static Treaty.Cli.DemoScenarios;

namespace Treaty.Cli.Experiments;

/// <summary>
/// A saga commits each step locally as it goes, so a reader between two steps sees money taken for
/// an order that is not confirmed (and here never will be: the pen is out of stock). The order's
/// semantic lock is the counter-measure a reader can honour: the order says it is processing.
/// TCC beside it: the money is only held, visibly, and never appears as a charge.
/// </summary>
internal static class IsolationExperiment
{
    public static Experiment Definition { get; } = new("isolation",
        "A saga has no isolation: other readers see its in-between state.", RunAsync);

    private static async Task<ExperimentResult> RunAsync(ExperimentContext context, CancellationToken ct)
    {
        var env = context.Env;
        var scenarios = new DemoScenarios(env, null, null);
        var table = new Table().Border(TableBorder.Rounded).Title("A reader between the payment and the stock step (the pen is out of stock)");
        table.AddColumn("protocol");
        table.AddColumn("the ledger shows");
        table.AddColumn("wallet held");
        table.AddColumn("the order shows");
        table.AddColumn("in the end");
        var checks = new List<Check>();
        foreach (var protocol in new[] { "saga", "tcc" })
        {
            // Slow the stock step, so the transaction sits between its payment and its stock step.
            var stockPath = protocol == "saga" ? "/saga/inventory/reserve" : "/tcc/inventory/try";
            await env.SetFaultAsync(env.InventoryUrl, stockPath, failTimes: 0, status: 503, delayMs: 1500, ct);
            var (orderId, gid) = await scenarios.CheckoutAsync("alice", [("pen", 1)], ct, protocol);
            var paid = await scenarios.PollAsync(gid, tx => OpStatus(tx, "payment", protocol == "saga" ? "action" : "try") == "succeeded", ct);

            // What a reader sees meanwhile.
            var debits = (await env.GetJsonAsync($"{env.PaymentUrl}/wallets/alice/ledger", ct))["entries"]!.AsArray()
                .Count(e => Str(e, "gid") == gid && Str(e, "kind") == "debit");
            var held = Dec(await env.GetJsonAsync($"{env.PaymentUrl}/wallets/alice", ct), "held");
            var during = await env.GetJsonAsync($"{env.OrderUrl}/orders/{orderId}", ct);
            var processing = during["processing"]?.GetValue<bool>() == true;

            await env.ClearFaultsAsync(ct);
            var after = await scenarios.OrderAsync(orderId, ct);
            var ledgerAfter = (await env.GetJsonAsync($"{env.PaymentUrl}/wallets/alice/ledger", ct))["entries"]!.AsArray()
                .Where(e => Str(e, "gid") == gid).Select(e => Str(e, "kind")).ToList();
            table.AddRow(protocol,
                debits > 0 ? "[red]a debit of 25.00[/] (the customer was charged)" : "no charge",
                $"{held:0.00}",
                $"{Str(during, "status")}, processing: {processing.ToString().ToLowerInvariant()}",
                $"{Str(after, "status")}; ledger: {(ledgerAfter.Count == 0 ? "nothing" : string.Join(", ", ledgerAfter))}");
            checks.Add(new Check($"{protocol}: the payment step had finished while the stock step ran", paid));
            if (protocol == "saga")
            {
                checks.Add(new Check("saga: a reader of the ledger sees the charge of an unconfirmed order", debits == 1 && Str(during, "status") == "PENDING", $"{debits} debit(s), order {Str(during, "status")}"));
                checks.Add(new Check("saga: a reader of the order sees it processing (its semantic lock)", processing));
                checks.Add(new Check("saga: afterwards refunded and cancelled", Str(after, "status") == "CANCELLED" && ledgerAfter.SequenceEqual(["debit", "refund"]), string.Join(", ", ledgerAfter)));
            }
            else
            {
                checks.Add(new Check("tcc: no charge in the ledger, the amount held instead", debits == 0 && held >= 2.00m, $"{debits} debit(s), held {held}"));
                checks.Add(new Check("tcc: afterwards cancelled, nothing charged, nothing held", Str(after, "status") == "CANCELLED" && ledgerAfter.Count == 0
                    && Dec(await env.GetJsonAsync($"{env.PaymentUrl}/wallets/alice", ct), "held") == 0m));
            }
        }

        return new ExperimentResult(Definition.Name,
            "between its steps the saga showed a charge for an order it then cancelled; its semantic lock said \"processing\"; TCC only held the money", checks, table);
    }
}
