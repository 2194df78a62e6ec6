using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json.Nodes;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>
/// Issue 10, part 3, end to end: the Shop's checkout with <c>protocol: "choreography"</c> on the
/// embedded transport — no orchestrator, the services' events drive it and are reported to the
/// coordinator — with the same outcomes and invariants as the other protocols.
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed class ChoreographyShopTests(ShopKitEnvironment fixture, ITestOutputHelper output) : IClassFixture<ShopKitEnvironment>
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private DemoEnvironment Env => fixture.Env;

    [Fact]
    public async Task Choreography_Book_OrderConfirmed_OneDebit_StockSold_NothingHeld_TimelineCommitted()
    {
        var ct = CancellationToken.None;
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
        after.Held.ShouldBe(0);
        (await HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    [Fact]
    public async Task Choreography_LaptopOverTheLimit_OrderCancelledWithTheLimit_NothingMoved()
    {
        var ct = CancellationToken.None;
        var balance = await BalanceAsync("alice", ct);
        var laptop = await StockAsync("laptop", ct);

        var (orderId, gid) = await CheckoutAsync("alice", "laptop", 1, ct);
        var tx = await WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("aborted");
        await ShouldReportAsync(gid, ct, "order.created", "payment.failed", "order.cancelled");
        var order = await WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CANCELLED");
        order["reason"]!.GetValue<string>().ShouldContain("limit");
        (await BalanceAsync("alice", ct)).ShouldBe(balance);
        (await LedgerAsync("alice", gid, ct)).ShouldBe((0, 0));
        var after = await StockAsync("laptop", ct);
        after.ShouldBe(laptop);
        (await HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    [Fact]
    public async Task Choreography_PenOutOfStock_PaymentRefunded_OrderCancelledWithTheStock_MoneyConserved()
    {
        var ct = CancellationToken.None;
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

    [Fact]
    public async Task Choreography_SameEventDeliveredTwice_ChangesNothing_AndARepublishUnderANewIdIsNotTakenTwice()
    {
        var ct = CancellationToken.None;
        var gid = "checkout-dup-" + Guid.NewGuid().ToString("N")[..12];
        var balance = await BalanceAsync("bob", ct);
        var book = await StockAsync("book", ct);
        var body = new JsonObject
        {
            ["orderId"] = gid["checkout-".Length..],
            ["customerId"] = "bob",
            ["amount"] = 25.00m,
            ["items"] = new JsonArray(new JsonObject { ["sku"] = "book", ["qty"] = 1 }),
        }.ToJsonString();
        var messageId = Guid.CreateVersion7().ToString();

        // The embedded transport's redelivery: the same message id again (a 2xx lost on the way back).
        (await DeliverAsync(Env.PaymentUrl, messageId, "order.created", gid, body, ct)).ShouldBeTrue();
        (await DeliverAsync(Env.PaymentUrl, messageId, "order.created", gid, body, ct)).ShouldBeTrue();
        // A republish under a new id (a publisher that crashed before marking its row sent, then resent it).
        (await DeliverAsync(Env.PaymentUrl, Guid.CreateVersion7().ToString(), "order.created", gid, body, ct)).ShouldBeTrue();

        (await LedgerAsync("bob", gid, ct)).ShouldBe((1, 0));
        (balance - await BalanceAsync("bob", ct)).ShouldBe(25.00m);
        // payment.reserved went out once: inventory sells the book once.
        var clock = Stopwatch.StartNew();
        while ((await StockAsync("book", ct)).Sold == book.Sold && clock.Elapsed < Patience)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        await Task.Delay(TimeSpan.FromSeconds(1), TimeProvider.System, ct);
        (await StockAsync("book", ct)).Sold.ShouldBe(book.Sold + 1);
        (await LedgerAsync("bob", gid, ct)).ShouldBe((1, 0));
    }

    [Fact]
    public async Task Choreography_AReportTheCoordinatorRefuses_DoesNotHoldBackTheNextCheckoutsTimeline()
    {
        var ct = CancellationToken.None;
        // A saga's gid: the coordinator refuses (409) any choreography event for it, for good.
        var sagaGid = await SagaCheckoutAsync("alice", "laptop", ct);
        await WaitTerminalAsync(sagaGid, ct);
        var body = new JsonObject
        {
            ["orderId"] = "ord-not-here-" + Guid.NewGuid().ToString("N")[..8],
            ["customerId"] = "alice",
            ["amount"] = 1500.00m,
            ["items"] = new JsonArray(new JsonObject { ["sku"] = "laptop", ["qty"] = 1 }),
        }.ToJsonString();
        // Over the limit: Payment publishes payment.failed under the saga's gid, and reports it.
        (await DeliverAsync(Env.PaymentUrl, Guid.CreateVersion7().ToString(), "order.created", sagaGid, body, ct)).ShouldBeTrue();

        var (_, gid) = await CheckoutAsync("alice", "laptop", 1, ct);

        (await WaitTerminalAsync(gid, ct))["status"]!.GetValue<string>().ShouldBe("aborted");
        await ShouldReportAsync(gid, ct, "order.created", "payment.failed", "order.cancelled");
        var saga = await Env.GetJsonAsync($"{Env.CoordinatorUrl}/api/v1/transactions/{sagaGid}", ct);
        saga["protocol"]!.GetValue<string>().ShouldBe("saga");
        saga.ToJsonString().ShouldNotContain("payment.failed");
        // Payment keeps the refused report, marked refused for good: it is not sent again and again.
        var clock = Stopwatch.StartNew();
        long? state = null;
        while (state != 2 && clock.Elapsed < Patience)
        {
            state = ReportState(Path.Combine(Env.Root, "payment", "payment.db"), sagaGid);
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        state.ShouldBe(2);
        ReportState(Path.Combine(Env.Root, "payment", "payment.db"), gid).ShouldBe(1);
    }

    private static long? ReportState(string database, string gid)
    {
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Mode=ReadOnly;Pooling=False");
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = "SELECT MIN(reported) FROM shop_event_reports WHERE gid = $gid";
        command.Parameters.AddWithValue("$gid", gid);
        return command.ExecuteScalar() is long value ? value : null;
    }

    private async Task<string> SagaCheckoutAsync(string customer, string sku, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["customerId"] = customer,
            ["items"] = new JsonArray(new JsonObject { ["sku"] = sku, ["qty"] = 1 }),
            ["protocol"] = "saga",
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, Env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
        request.Headers.Add("Idempotency-Key", "saga-" + Guid.NewGuid().ToString("N"));
        using var response = await Env.Http.SendAsync(request, ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        ((int)response.StatusCode).ShouldBe(202, text);
        return JsonNode.Parse(text)!["gid"]!.GetValue<string>();
    }

    /// <summary>
    /// Every service reports its own events, independently: the terminal one may reach the
    /// coordinator before an earlier one of another service, which then joins the timeline.
    /// </summary>
    private async Task ShouldReportAsync(string gid, CancellationToken ct, params string[] types)
    {
        var clock = Stopwatch.StartNew();
        var text = "";
        while (clock.Elapsed < Patience)
        {
            text = (await Env.GetJsonAsync($"{Env.CoordinatorUrl}/api/v1/transactions/{gid}", ct)).ToJsonString();
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

    private async Task<bool> DeliverAsync(string serviceUrl, string messageId, string type, string gid, string body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, serviceUrl + "/treaty/messages")
        {
            Content = new StringContent(body, Encoding.UTF8, "application/json"),
        };
        request.Headers.Add("Treaty-Message-Id", messageId);
        request.Headers.Add("Treaty-Message-Type", type);
        request.Headers.Add("Treaty-Correlation-Id", Uri.EscapeDataString(gid));
        request.Headers.Add("Treaty-Source", "order");
        request.Headers.Add("Treaty-Created-At", DateTimeOffset.UtcNow.ToString("O", CultureInfo.InvariantCulture));
        using var response = await Env.Http.SendAsync(request, ct);
        output.WriteLine($"{type} {messageId} → {(int)response.StatusCode}");
        return response.IsSuccessStatusCode;
    }

    private async Task<(string OrderId, string Gid)> CheckoutAsync(string customer, string sku, int qty, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["customerId"] = customer,
            ["items"] = new JsonArray(new JsonObject { ["sku"] = sku, ["qty"] = qty }),
            ["protocol"] = "choreography",
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, Env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
        request.Headers.Add("Idempotency-Key", "choreo-" + Guid.NewGuid().ToString("N"));
        using var response = await Env.Http.SendAsync(request, ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        ((int)response.StatusCode).ShouldBe(202, text);
        var answer = JsonNode.Parse(text)!;
        return (answer["orderId"]!.GetValue<string>(), answer["gid"]!.GetValue<string>());
    }

    private async Task<JsonNode> WaitOrderDecidedAsync(string orderId, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var order = await Env.GetJsonAsync($"{Env.OrderUrl}/orders/{orderId}", ct);
            if (order["status"]!.GetValue<string>() != "PENDING" || clock.Elapsed > Patience)
            {
                return order;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }
    }

    private async Task<decimal> BalanceAsync(string customer, CancellationToken ct) =>
        decimal.Parse((await Env.GetJsonAsync($"{Env.PaymentUrl}/wallets/{customer}", ct))["balance"]!.ToJsonString(), CultureInfo.InvariantCulture);

    private async Task<decimal> HeldMoneyAsync(string customer, CancellationToken ct) =>
        decimal.Parse((await Env.GetJsonAsync($"{Env.PaymentUrl}/wallets/{customer}", ct))["held"]!.ToJsonString(), CultureInfo.InvariantCulture);

    private async Task<(int Available, int Held, int Sold)> StockAsync(string sku, CancellationToken ct)
    {
        var stock = await Env.GetJsonAsync($"{Env.InventoryUrl}/stock/{sku}", ct);
        return (stock["available"]!.GetValue<int>(), stock["held"]!.GetValue<int>(), stock["sold"]!.GetValue<int>());
    }

    private async Task<(int Debits, int Refunds)> LedgerAsync(string customer, string gid, CancellationToken ct)
    {
        var entries = (await Env.GetJsonAsync($"{Env.PaymentUrl}/wallets/{customer}/ledger", ct))["entries"]!.AsArray()
            .Where(e => e!["gid"]!.GetValue<string>() == gid).ToList();
        return (entries.Count(e => e!["kind"]!.GetValue<string>() == "debit"), entries.Count(e => e!["kind"]!.GetValue<string>() == "refund"));
    }

    private async Task<JsonNode> WaitTerminalAsync(string gid, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        string? last = null;
        while (clock.Elapsed < Patience)
        {
            using var response = await Env.Http.GetAsync($"{Env.CoordinatorUrl}/api/v1/transactions/{gid}", ct);
            if (response.IsSuccessStatusCode)
            {
                last = await response.Content.ReadAsStringAsync(ct);
                var tx = JsonNode.Parse(last)!;
                if (tx["status"]!.GetValue<string>() is "committed" or "aborted")
                {
                    output.WriteLine(last);
                    return tx;
                }
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        throw new TimeoutException($"{gid} did not end within {Patience.TotalSeconds:0} s: {last}");
    }
}
