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
