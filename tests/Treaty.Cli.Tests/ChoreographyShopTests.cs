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

    private ChoreographyShop Shop => new(Env);

    [Fact]
    public Task Choreography_Book_OrderConfirmed_OneDebit_StockSold_NothingHeld_TimelineCommitted() => Shop.BookIsConfirmedOnceAsync(CancellationToken.None);

    [Fact]
    public async Task Choreography_LaptopOverTheLimit_OrderCancelledWithTheLimit_NothingMoved()
    {
        var ct = CancellationToken.None;
        var balance = await Shop.BalanceAsync("alice", ct);
        var laptop = await Shop.StockAsync("laptop", ct);

        var (orderId, gid) = await Shop.CheckoutAsync("alice", "laptop", 1, ct);
        var tx = await Shop.WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("aborted");
        await Shop.ShouldReportAsync(gid, ct, "order.created", "payment.failed", "order.cancelled");
        var order = await Shop.WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CANCELLED");
        order["reason"]!.GetValue<string>().ShouldContain("limit");
        (await Shop.BalanceAsync("alice", ct)).ShouldBe(balance);
        (await Shop.LedgerAsync("alice", gid, ct)).ShouldBe((0, 0));
        var after = await Shop.StockAsync("laptop", ct);
        after.ShouldBe(laptop);
        (await Shop.HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    [Fact]
    public Task Choreography_PenOutOfStock_PaymentRefunded_OrderCancelledWithTheStock_MoneyConserved() => Shop.PenIsRefundedAndCancelledAsync(CancellationToken.None);

    [Fact]
    public async Task Choreography_SameEventDeliveredTwice_ChangesNothing_AndARepublishUnderANewIdIsNotTakenTwice()
    {
        var ct = CancellationToken.None;
        var gid = "checkout-dup-" + Guid.NewGuid().ToString("N")[..12];
        var balance = await Shop.BalanceAsync("bob", ct);
        var book = await Shop.StockAsync("book", ct);
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

        (await Shop.LedgerAsync("bob", gid, ct)).ShouldBe((1, 0));
        (balance - await Shop.BalanceAsync("bob", ct)).ShouldBe(25.00m);
        // payment.reserved went out once: inventory sells the book once.
        var clock = Stopwatch.StartNew();
        while ((await Shop.StockAsync("book", ct)).Sold == book.Sold && clock.Elapsed < Patience)
        {
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        await Task.Delay(TimeSpan.FromSeconds(1), TimeProvider.System, ct);
        (await Shop.StockAsync("book", ct)).Sold.ShouldBe(book.Sold + 1);
        (await Shop.LedgerAsync("bob", gid, ct)).ShouldBe((1, 0));
    }

    [Fact]
    public async Task Choreography_AReportTheCoordinatorRefuses_DoesNotHoldBackTheNextCheckoutsTimeline()
    {
        var ct = CancellationToken.None;
        // A saga's gid: the coordinator refuses (409) any choreography event for it, for good.
        var sagaGid = await SagaCheckoutAsync("alice", "laptop", ct);
        await Shop.WaitTerminalAsync(sagaGid, ct);
        var body = new JsonObject
        {
            ["orderId"] = "ord-not-here-" + Guid.NewGuid().ToString("N")[..8],
            ["customerId"] = "alice",
            ["amount"] = 1500.00m,
            ["items"] = new JsonArray(new JsonObject { ["sku"] = "laptop", ["qty"] = 1 }),
        }.ToJsonString();
        // Over the limit: Payment publishes payment.failed under the saga's gid, and reports it.
        (await DeliverAsync(Env.PaymentUrl, Guid.CreateVersion7().ToString(), "order.created", sagaGid, body, ct)).ShouldBeTrue();

        var (_, gid) = await Shop.CheckoutAsync("alice", "laptop", 1, ct);

        (await Shop.WaitTerminalAsync(gid, ct))["status"]!.GetValue<string>().ShouldBe("aborted");
        await Shop.ShouldReportAsync(gid, ct, "order.created", "payment.failed", "order.cancelled");
        var saga = await Env.GetJsonAsync($"{Env.CoordinatorUrl}/api/v1/transactions/{sagaGid}", ct);
        saga["protocol"]!.GetValue<string>().ShouldBe("saga");
        saga.ToJsonString().ShouldNotContain("payment.failed");
        // Payment keeps the refused report, marked refused for good: it is not sent again and again.
        var clock = Stopwatch.StartNew();
        string? state = null;
        while (state != "refused" && clock.Elapsed < Patience)
        {
            state = ReportState(Path.Combine(Env.Root, "payment", "payment.db"), sagaGid);
            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        state.ShouldBe("refused");
        ReportState(Path.Combine(Env.Root, "payment", "payment.db"), gid).ShouldBe("recorded");
    }

    /// <summary>The messaging kit's verdict on the gid's reports (treaty_reports.result), once every one is answered; else null.</summary>
    private static string? ReportState(string database, string gid)
    {
        using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={database};Mode=ReadOnly;Pooling=False");
        connection.Open();
        using var command = connection.CreateCommand();
        command.CommandText = "SELECT CASE WHEN COUNT(*) > 0 AND COUNT(reported_at) = COUNT(*) THEN MIN(result) END FROM treaty_reports WHERE correlation_id = $gid";
        command.Parameters.AddWithValue("$gid", gid);
        return command.ExecuteScalar() as string;
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

    [Fact]
    public async Task Choreography_APoisonEvent_IsOnTheCoordinatorsDeadLetterView_AndReplayedFromIt()
    {
        var ct = CancellationToken.None;
        var gid = "checkout-poison-" + Guid.NewGuid().ToString("N")[..12];
        var messageId = Guid.CreateVersion7().ToString();
        var sources = (await Env.GetJsonAsync($"{Env.CoordinatorUrl}/api/v1/dead-letters", ct))["sources"]!.AsArray();
        sources.Select(x => x!["name"]!.GetValue<string>()).Order().ShouldBe(["inventory", "order", "payment"]);
        sources.ShouldAllBe(x => x!["reachable"]!.GetValue<bool>());

        // An order.created Payment cannot read: every delivery fails, and after MaxAttempts (5) Payment
        // gives up on it (the embedded transport's sender redelivers; here the test is the sender).
        var delivered = false;
        for (var attempt = 1; attempt <= 10 && !delivered; attempt++)
        {
            delivered = await DeliverAsync(Env.PaymentUrl, messageId, "order.created", gid, "{\"orderId\":42}", ct);
        }

        delivered.ShouldBeTrue("Payment takes it for good once it is a dead letter");
        var letter = await DeadLetterAsync(messageId, ct);
        letter["source"]!.GetValue<string>().ShouldBe("payment");
        letter["type"]!.GetValue<string>().ShouldBe("order.created");
        letter["correlationId"]!.GetValue<string>().ShouldBe(gid);
        letter["status"]!.GetValue<string>().ShouldBe("dead");
        letter["attempts"]!.AsArray().Count.ShouldBe(5);

        // The operator's replay goes through the coordinator to Payment, once.
        var id = letter["id"]!.GetValue<long>();
        using (var replay = await Env.Http.PostAsync($"{Env.CoordinatorUrl}/api/v1/dead-letters/payment/{id}/replay", null, ct))
        {
            replay.StatusCode.ShouldBe(System.Net.HttpStatusCode.OK, await replay.Content.ReadAsStringAsync(ct));
        }

        using (var again = await Env.Http.PostAsync($"{Env.CoordinatorUrl}/api/v1/dead-letters/payment/{id}/replay", null, ct))
        {
            again.StatusCode.ShouldBe(System.Net.HttpStatusCode.Conflict, "a letter being replayed is not dead: no second replay");
        }

        (await DeadLetterAsync(messageId, ct))["status"]!.GetValue<string>().ShouldNotBe("dead");
    }

    private async Task<JsonNode> DeadLetterAsync(string messageId, CancellationToken ct)
    {
        var list = await Env.GetJsonAsync($"{Env.CoordinatorUrl}/api/v1/dead-letters", ct);
        return list["deadLetters"]!.AsArray().SingleOrDefault(x => x!["messageId"]!.GetValue<string>() == messageId)
            ?? throw new ShouldAssertException($"{messageId} is not on the coordinator's dead-letter view: {list.ToJsonString()}");
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
}
