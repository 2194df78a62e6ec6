using System.Diagnostics;
using System.Text.Json.Nodes;
using static Treaty.Cli.DemoScenarios;

namespace Treaty.Cli;

/// <summary>One checkout case under one protocol, as the demo's protocol table shows it.</summary>
/// <param name="Protocol">saga, tcc, 2pc, 3pc or choreography.</param>
/// <param name="Case">Which checkout.</param>
/// <param name="Outcome">The order's final status and reason.</param>
/// <param name="Latency">From the checkout's 202 to the order's final status, as the customer waits.</param>
/// <param name="Calls">Calls the coordinator made to the services (every attempt of every operation).</param>
/// <param name="ForcedWrites">Writes the coordinator waited to be durable before a call left.</param>
/// <param name="Writes">Every write of the transaction by the coordinator.</param>
/// <param name="Checks">What must hold.</param>
internal sealed record ProtocolRow(string Protocol, string Case, string Outcome, TimeSpan Latency, int Calls, int ForcedWrites, int Writes, IReadOnlyList<Check> Checks)
{
    public bool Passed => Checks.All(c => c.Passed);
}

/// <summary>
/// The demo's checkout cases under every protocol the Shop speaks: the same outcomes (book
/// confirmed, laptop over alice's limit cancelled, pen out of stock cancelled), money and stock
/// conserved, nothing held — and what each protocol cost for it.
/// </summary>
internal sealed class ProtocolComparison(DemoScenarios scenarios)
{
    public static readonly string[] Protocols = ["saga", "tcc", "2pc", "3pc", "choreography"];

    private static readonly (string Name, string Customer, (string Sku, int Qty)[] Items, string Status, decimal Charged, string Reason)[] Cases =
    [
        ("book", "alice", [("book", 1)], "CONFIRMED", 25.00m, ""),
        ("laptop over the limit", "alice", [("laptop", 1)], "CANCELLED", 0m, "limit"),
        ("pen out of stock", "alice", [("pen", 1)], "CANCELLED", 0m, "stock"),
    ];

    public async Task<IReadOnlyList<ProtocolRow>> RunAsync(string protocol, CancellationToken ct)
    {
        var rows = new List<ProtocolRow>();
        foreach (var @case in Cases)
        {
            rows.Add(await RunCaseAsync(protocol, @case, ct));
        }

        return rows;
    }

    private async Task<ProtocolRow> RunCaseAsync(string protocol, (string Name, string Customer, (string Sku, int Qty)[] Items, string Status, decimal Charged, string Reason) @case, CancellationToken ct)
    {
        var balance = await scenarios.WalletAsync(@case.Customer, ct);
        var sku = @case.Items[0].Sku;
        var stock = await scenarios.StockAsync(sku, ct);
        var clock = Stopwatch.StartNew();
        var (orderId, gid) = await scenarios.CheckoutAsync(@case.Customer, @case.Items, ct, protocol);
        var order = await scenarios.OrderAsync(orderId, ct);
        var latency = clock.Elapsed;
        var tx = await scenarios.WaitTerminalAsync(gid, ct);
        await scenarios.NothingHeldAsync(ct); // an aborted 2PC/3PC's rollbacks land just after its decision
        var stockAfter = await scenarios.StockAsync(sku, ct);
        var reason = Str(order, "reason") ?? "";
        var committed = @case.Status == "CONFIRMED";
        var checks = new List<Check>
        {
            Expect("transaction " + (committed ? "committed" : "aborted"), Str(tx, "status"), committed ? "committed" : "aborted"),
            Expect("order " + @case.Status, Str(order, "status"), @case.Status),
            new("the reason names the cause", committed ? reason.Length == 0 : reason.Contains(@case.Reason, StringComparison.OrdinalIgnoreCase), reason),
            Expect($"wallet charged {@case.Charged:0.00}", balance - await scenarios.WalletAsync(@case.Customer, ct), @case.Charged),
            Expect($"{sku} sold {(committed ? @case.Items[0].Qty : 0)}", stockAfter.Sold - stock.Sold, committed ? @case.Items[0].Qty : 0),
            Expect($"{sku} nothing held", stockAfter.Held, 0),
        };
        // A saga (orchestrated or choreographed) debits first: stock refused means one debit and one refund.
        if (committed || protocol is "saga" or "choreography" && @case.Reason == "stock")
        {
            checks.Add(await scenarios.LedgerOnceAsync(@case.Customer, gid, expectRefund: !committed, ct));
        }

        var outcome = Str(order, "status") + (reason.Length > 0 ? ": " + Shorten(reason) : "");
        return new ProtocolRow(protocol, @case.Name, outcome, latency, CallsOf(tx), tx["writes"]?["forced"]?.GetValue<int>() ?? 0,
            tx["writes"]?["total"]?.GetValue<int>() ?? 0, checks);
    }

    /// <summary>Every attempt of every operation, of every branch and of the transaction itself.</summary>
    public static int CallsOf(JsonNode tx)
    {
        static int Attempts(JsonNode? ops) => ops is JsonObject o ? o.Sum(op => op.Value?["attempts"]?.GetValue<int>() ?? 0) : 0;
        return (tx["branches"]?.AsArray().Sum(b => Attempts(b?["ops"])) ?? 0) + Attempts(tx["ops"]);
    }

    private static string Shorten(string text) => text.Length <= 60 ? text : text[..57] + "…";
}
