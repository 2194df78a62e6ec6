using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace Treaty.Cli.Tests;

/// <summary>
/// What the choreography tests read from the Shop and the coordinator, on either transport: the
/// demo's own readers (<see cref="DemoScenarios"/>) plus the held money and one gid's ledger entries.
/// </summary>
internal sealed class ChoreographyShop(DemoEnvironment env)
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private readonly DemoScenarios _scenarios = new(env, null, null);

    /// <summary>A checkout with <c>protocol: "choreography"</c> and a fresh Idempotency-Key.</summary>
    public Task<(string OrderId, string Gid)> CheckoutAsync(string customer, string sku, int qty, CancellationToken ct) =>
        _scenarios.CheckoutAsync(customer, [(sku, qty)], ct, "choreography", "choreo-" + Guid.NewGuid().ToString("N"));

    /// <summary>The order once it has left PENDING.</summary>
    public Task<JsonNode> WaitOrderDecidedAsync(string orderId, CancellationToken ct) => _scenarios.OrderAsync(orderId, ct);

    /// <summary>The coordinator's view once the transaction is committed or aborted.</summary>
    public Task<JsonNode> WaitTerminalAsync(string gid, CancellationToken ct) => _scenarios.WaitTerminalAsync(gid, ct);

    public Task<decimal> BalanceAsync(string customer, CancellationToken ct) => _scenarios.WalletAsync(customer, ct);

    public Task<(int Available, int Held, int Sold)> StockAsync(string sku, CancellationToken ct) => _scenarios.StockAsync(sku, ct);

    /// <summary>
    /// The demo's book on either transport: committed with order.created, payment.reserved,
    /// inventory.reserved and order.confirmed; CONFIRMED; one debit of 25.00; one book sold, the stock
    /// conserved, nothing held.
    /// </summary>
    public async Task BookIsConfirmedOnceAsync(CancellationToken ct)
    {
        var balance = await BalanceAsync("alice", ct);
        var book = await StockAsync("book", ct);

        var (orderId, gid) = await CheckoutAsync("alice", "book", 1, ct);
        var tx = await WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("committed");
        tx["protocol"]!.GetValue<string>().ShouldBe("choreography");
        await ShouldReportAsync(gid, ct, "order.created", "payment.reserved", "inventory.reserved", "order.confirmed");
        var order = await WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CONFIRMED");
        order["processing"]!.GetValue<bool>().ShouldBeFalse();
        (balance - await BalanceAsync("alice", ct)).ShouldBe(25.00m);
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 0));
        var after = await StockAsync("book", ct);
        (after.Sold - book.Sold).ShouldBe(1);
        (after.Available + after.Sold).ShouldBe(book.Available + book.Sold);
        after.Held.ShouldBe(0);
        (await HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    /// <summary>
    /// The demo's pen (out of stock) on either transport: aborted after payment.reserved,
    /// inventory.failed and payment.refunded; CANCELLED naming the stock; one debit and one refund,
    /// the balance and the stock as before, nothing held.
    /// </summary>
    public async Task PenIsRefundedAndCancelledAsync(CancellationToken ct)
    {
        var balance = await BalanceAsync("alice", ct);
        var pen = await StockAsync("pen", ct);

        var (orderId, gid) = await CheckoutAsync("alice", "pen", 1, ct);
        var tx = await WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("aborted");
        await ShouldReportAsync(gid, ct, "order.created", "payment.reserved", "inventory.failed", "payment.refunded", "order.cancelled");
        var order = await WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CANCELLED");
        order["reason"]!.GetValue<string>().ShouldContain("stock", Case.Insensitive);
        (await BalanceAsync("alice", ct)).ShouldBe(balance);
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 1));
        (await StockAsync("pen", ct)).ShouldBe(pen);
        (await HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    public async Task<decimal> HeldMoneyAsync(string customer, CancellationToken ct) =>
        decimal.Parse((await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}", ct))["held"]!.ToJsonString(), CultureInfo.InvariantCulture);

    /// <summary>
    /// Waits until the coordinator's view of <paramref name="gid"/> names every event type. Every
    /// service reports its own events, independently: the terminal one may reach the coordinator
    /// before an earlier one of another service, which then joins the timeline.
    /// </summary>
    public async Task ShouldReportAsync(string gid, CancellationToken ct, params string[] types)
    {
        var clock = Stopwatch.StartNew();
        var text = "";
        while (clock.Elapsed < Patience)
        {
            text = (await env.GetJsonAsync($"{env.CoordinatorUrl}/api/v1/transactions/{gid}", ct)).ToJsonString();
            if (types.All(type => text.Contains("\"" + type + "\"", StringComparison.Ordinal)))
            {
                return;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        foreach (var type in types)
        {
            text.ShouldContain("\"" + type + "\"", customMessage: text);
        }
    }

    /// <summary>The debits and refunds of <paramref name="gid"/> in <paramref name="customer"/>'s ledger.</summary>
    public async Task<(int Debits, int Refunds)> LedgerAsync(string customer, string gid, CancellationToken ct)
    {
        var entries = (await env.GetJsonAsync($"{env.PaymentUrl}/wallets/{customer}/ledger", ct))["entries"]!.AsArray()
            .Where(e => e!["gid"]!.GetValue<string>() == gid).ToList();
        return (entries.Count(e => e!["kind"]!.GetValue<string>() == "debit"), entries.Count(e => e!["kind"]!.GetValue<string>() == "refund"));
    }
}
