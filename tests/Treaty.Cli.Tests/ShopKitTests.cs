using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Treaty.Core.Security;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>
/// One real environment (coordinator + the three Shop services as processes, signed callbacks) for
/// the Shop-on-the-kit tests, which run one after another and scope every check to their own keys,
/// orders and gids.
/// </summary>
public sealed class ShopKitEnvironment : IAsyncLifetime
{
    private DemoEnvironment? _env;

    internal DemoEnvironment Env => _env ?? throw new InvalidOperationException("not started");

    public async Task InitializeAsync() => _env = await DemoEnvironment.StartAsync(dataDir: null, CancellationToken.None);

    public async Task DisposeAsync()
    {
        if (_env is not null)
        {
            await _env.DisposeAsync();
        }
    }
}

/// <summary>
/// Issue 4, part 5, end to end: the Shop's checkout behind the kit's Idempotency-Key middleware
/// (the double-charge story, a burst on one key, a process killed between the commit and the
/// answer) and its branch endpoints behind the kit's signature verification.
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed class ShopKitTests(ShopKitEnvironment fixture, ITestOutputHelper output) : IClassFixture<ShopKitEnvironment>
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private DemoEnvironment Env => fixture.Env;

    [Fact]
    public async Task DoubleCharge_ClientDropsTheAnswer_RetryWithTheSameKeyGetsTheOriginalResponse_OneOrderOneDebit()
    {
        var ct = CancellationToken.None;
        var key = "double-charge-" + Guid.NewGuid().ToString("N");
        var body = Checkout("alice", ("book", 1));
        var ordersBefore = await OrderIdsAsync(ct);
        var walletBefore = await BalanceAsync("alice", ct);

        // The order service holds its answer 3 s after the kit committed the checkout; the client waits 1 s.
        await Env.SetFaultAsync(Env.OrderUrl, "/checkout", failTimes: 0, status: 503, delayMs: 3000, ct);
        using (var impatient = new HttpClient { Timeout = TimeSpan.FromSeconds(1) })
        {
            await Should.ThrowAsync<TaskCanceledException>(() => PostCheckoutAsync(impatient, key, body, ct));
        }

        await Env.ClearFaultsAsync(ct);

        // The user clicks again with the same key: the stored answer, not a second order.
        var (status, text, replayed) = await PostCheckoutAsync(Env.Http, key, body, ct);
        status.ShouldBe(HttpStatusCode.Accepted, text);
        replayed.ShouldBeTrue("a retry after the commit is a replay");
        var answer = JsonNode.Parse(text)!;
        var orderId = answer["orderId"]!.GetValue<string>();
        var gid = answer["gid"]!.GetValue<string>();
        answer["status"]!.GetValue<string>().ShouldBe("PROCESSING");

        var newOrders = (await OrderIdsAsync(ct)).Except(ordersBefore).ToList();
        newOrders.ShouldBe([orderId], "exactly one order for the key, the one the replay names");

        // A third click: byte for byte the same answer.
        var (again, againText, againReplayed) = await PostCheckoutAsync(Env.Http, key, body, ct);
        again.ShouldBe(HttpStatusCode.Accepted);
        againReplayed.ShouldBeTrue();
        againText.ShouldBe(text);

        (await WaitTerminalAsync(gid, ct)).ShouldBe("committed");
        (await OrderStatusAsync(orderId, ct)).ShouldBe("CONFIRMED");
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 0), "one debit, no refund");
        (await BalanceAsync("alice", ct)).ShouldBe(walletBefore - 25.00m);
    }

    [Fact]
    public async Task Burst_FortyEightConcurrentCheckoutsWithOneKey_OneOrderOneCharge_EveryAnswerTheStored202OrInFlight()
    {
        var ct = CancellationToken.None;
        var key = "burst-" + Guid.NewGuid().ToString("N");
        var body = Checkout("alice", ("book", 2));
        var ordersBefore = await OrderIdsAsync(ct);

        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 64 }) { Timeout = TimeSpan.FromSeconds(30) };
        using var start = new ManualResetEventSlim(false);
        var calls = Enumerable.Range(0, 48).Select(_ => Task.Run(async () =>
        {
            start.Wait(ct);
            return await PostCheckoutAsync(http, key, body, ct);
        }, ct)).ToList();
        start.Set();
        var answers = await Task.WhenAll(calls);

        var accepted = answers.Where(a => a.Status == HttpStatusCode.Accepted).ToList();
        var inFlight = answers.Where(a => a.Status == HttpStatusCode.Conflict).ToList();
        output.WriteLine($"{accepted.Count} × 202 ({accepted.Count(a => a.Replayed)} replayed), {inFlight.Count} × 409 in flight");
        (accepted.Count + inFlight.Count).ShouldBe(answers.Length, string.Join("\n", answers.Select(a => $"{(int)a.Status} {a.Text}")));
        foreach (var conflict in inFlight)
        {
            conflict.Text.ShouldContain("idempotency-key-in-flight");
        }

        accepted.ShouldNotBeEmpty();
        accepted.Count(a => !a.Replayed).ShouldBeLessThanOrEqualTo(1, "the handler answers once; every other 202 is a replay");
        accepted.Select(a => a.Text).Distinct().Count().ShouldBe(1, "every 202 is the stored answer, byte for byte");

        // A retry after the burst gets the stored answer.
        var (status, text, replayed) = await PostCheckoutAsync(Env.Http, key, body, ct);
        status.ShouldBe(HttpStatusCode.Accepted);
        replayed.ShouldBeTrue();
        text.ShouldBe(accepted[0].Text);

        var answer = JsonNode.Parse(text)!;
        var (orderId, gid) = (answer["orderId"]!.GetValue<string>(), answer["gid"]!.GetValue<string>());
        (await OrderIdsAsync(ct)).Except(ordersBefore).ShouldBe([orderId], "exactly one order");
        (await WaitTerminalAsync(gid, ct)).ShouldBe("committed");
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 0), "exactly one charge");
    }

    [Fact]
    public async Task OrderServiceKilledBetweenCommitAndResponse_RestartedOnItsData_RetryGetsTheCommittedResult_SagaFinishesOnce()
    {
        var ct = CancellationToken.None;
        var key = "killed-" + Guid.NewGuid().ToString("N");
        var body = Checkout("bob", ("book", 1));
        var ordersBefore = await OrderIdsAsync(ct);
        var killedPid = Env.Order.Id;

        await Env.SetFaultAsync(Env.OrderUrl, "/checkout", failTimes: 0, status: 503, delayMs: 0, ct, killAfterCommit: true);
        var lost = await Record.ExceptionAsync(() => PostCheckoutAsync(Env.Http, key, body, ct));
        lost.ShouldBeOfType<HttpRequestException>($"the process died before answering: {lost}");
        (await Env.Order.WaitForExitAsync(TimeSpan.FromSeconds(30), ct)).ShouldNotBeNull("the order service died (FailFast)");

        await Env.RestartOrderAsync(ct);
        Env.Order.Id.ShouldNotBe(killedPid);

        // The checkout committed before the kill: the retry replays it.
        var (status, text, replayed) = await PostCheckoutAsync(Env.Http, key, body, ct);
        status.ShouldBe(HttpStatusCode.Accepted, text);
        replayed.ShouldBeTrue("the committed answer, not a new checkout");
        var answer = JsonNode.Parse(text)!;
        var (orderId, gid) = (answer["orderId"]!.GetValue<string>(), answer["gid"]!.GetValue<string>());
        (await OrderIdsAsync(ct)).Except(ordersBefore).ShouldBe([orderId], "the order committed before the kill, and only it");

        // Nobody submitted its saga before the kill; the restarted service's outbox does, once.
        (await WaitTerminalAsync(gid, ct)).ShouldBe("committed");
        (await OrderStatusAsync(orderId, ct)).ShouldBe("CONFIRMED");
        (await LedgerAsync("bob", gid, ct)).ShouldBe((1, 0), "one debit");
        var holds = (await Env.GetJsonAsync($"{Env.InventoryUrl}/stock/book/holds", ct))["holds"]!.AsArray()
            .Where(r => r!["gid"]!.GetValue<string>() == gid).ToList();
        holds.Count.ShouldBe(1);
        holds[0]!["state"]!.GetValue<string>().ShouldBe("sold");
        var order = await Env.GetJsonAsync($"{Env.OrderUrl}/orders/{orderId}", ct);
        order["processing"]!.GetValue<bool>().ShouldBeFalse("the confirmed order's semantic lock was dropped");
    }

    [Fact]
    public async Task BranchCall_WithABadSignature_Is401AndAppliesNothing()
    {
        var ct = CancellationToken.None;
        var gid = "forged-" + Guid.NewGuid().ToString("N");
        var envelope = Encoding.UTF8.GetBytes(new JsonObject
        {
            ["gid"] = gid,
            ["branch"] = "payment",
            ["op"] = "action",
            ["payload"] = new JsonObject { ["orderId"] = "ord-forged", ["customerId"] = "alice", ["amount"] = 10.00m },
        }.ToJsonString());
        var balanceBefore = await BalanceAsync("alice", ct);
        var appliedBefore = await AppliedAsync(Env.PaymentUrl, "/saga/payment/reserve", ct);
        var now = DateTimeOffset.UtcNow;

        var wrongSecret = CallbackSignature.Sign(Encoding.UTF8.GetBytes("not-the-secret-of-this-shop"), envelope, now);
        var forgedBody = CallbackSignature.Sign(Encoding.UTF8.GetBytes(Env.CallbackSecret), Encoding.UTF8.GetBytes("{}"), now);
        var stale = CallbackSignature.Sign(Encoding.UTF8.GetBytes(Env.CallbackSecret), envelope, now.AddMinutes(-10));
        foreach (var (what, header) in new[] { ("wrong secret", wrongSecret), ("another body's", forgedBody), ("expired", stale), ("malformed", "v1=zz"), ("missing", null) })
        {
            var (status, text) = await PostBranchAsync(Env.PaymentUrl + "/saga/payment/reserve", gid, envelope, header, ct);
            status.ShouldBe(HttpStatusCode.Unauthorized, $"{what} signature: {text}");
            text.ShouldContain("invalid-signature");
        }

        (await BalanceAsync("alice", ct)).ShouldBe(balanceBefore, "nothing was debited");
        (await LedgerAsync("alice", gid, ct)).ShouldBe((0, 0));
        (await AppliedAsync(Env.PaymentUrl, "/saga/payment/reserve", ct)).ShouldBe(appliedBefore);

        // The same call signed with the shared secret runs (and is then undone the same way).
        var good = CallbackSignature.Sign(Encoding.UTF8.GetBytes(Env.CallbackSecret), envelope, DateTimeOffset.UtcNow);
        var (okStatus, okText) = await PostBranchAsync(Env.PaymentUrl + "/saga/payment/reserve", gid, envelope, good, ct);
        okStatus.ShouldBe(HttpStatusCode.OK, okText);
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 0));
        var refund = Encoding.UTF8.GetBytes(new JsonObject { ["gid"] = gid, ["branch"] = "payment", ["op"] = "compensate" }.ToJsonString());
        var (refundStatus, refundText) = await PostBranchAsync(Env.PaymentUrl + "/saga/payment/refund", gid, refund,
            CallbackSignature.Sign(Encoding.UTF8.GetBytes(Env.CallbackSecret), refund, DateTimeOffset.UtcNow), ct);
        refundStatus.ShouldBe(HttpStatusCode.OK, refundText);
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 1));
        (await BalanceAsync("alice", ct)).ShouldBe(balanceBefore);
    }

    private static JsonObject Checkout(string customer, params (string Sku, int Qty)[] items) => new()
    {
        ["customerId"] = customer,
        ["items"] = new JsonArray([.. items.Select(i => (JsonNode)new JsonObject { ["sku"] = i.Sku, ["qty"] = i.Qty })]),
        ["protocol"] = "saga",
    };

    private async Task<(HttpStatusCode Status, string Text, bool Replayed)> PostCheckoutAsync(HttpClient http, string key, JsonObject body, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, Env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
        request.Headers.Add("Idempotency-Key", key);
        using var response = await http.SendAsync(request, ct);
        var text = await response.Content.ReadAsStringAsync(ct);
        var replayed = response.Headers.TryGetValues("Idempotent-Replayed", out var values) && values.Contains("true");
        return (response.StatusCode, text, replayed);
    }

    private async Task<(HttpStatusCode Status, string Text)> PostBranchAsync(string url, string gid, byte[] envelope, string? signature, CancellationToken ct)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = new ByteArrayContent(envelope) };
        request.Content.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/json");
        request.Headers.Add("Treaty-Gid", gid);
        if (signature is not null)
        {
            request.Headers.TryAddWithoutValidation(CallbackSignature.HeaderName, signature);
        }

        using var response = await Env.Http.SendAsync(request, ct);
        return (response.StatusCode, await response.Content.ReadAsStringAsync(ct));
    }

    private async Task<HashSet<string>> OrderIdsAsync(CancellationToken ct) =>
        [.. (await Env.GetJsonAsync(Env.OrderUrl + "/orders", ct))["orders"]!.AsArray().Select(o => o!["orderId"]!.GetValue<string>())];

    private async Task<string> OrderStatusAsync(string orderId, CancellationToken ct) =>
        (await Env.GetJsonAsync($"{Env.OrderUrl}/orders/{orderId}", ct))["status"]!.GetValue<string>();

    private async Task<decimal> BalanceAsync(string customer, CancellationToken ct) =>
        decimal.Parse((await Env.GetJsonAsync($"{Env.PaymentUrl}/wallets/{customer}", ct))["balance"]!.ToJsonString(), CultureInfo.InvariantCulture);

    private async Task<(int Debits, int Refunds)> LedgerAsync(string customer, string gid, CancellationToken ct)
    {
        var entries = (await Env.GetJsonAsync($"{Env.PaymentUrl}/wallets/{customer}/ledger", ct))["entries"]!.AsArray()
            .Where(e => e!["gid"]!.GetValue<string>() == gid).ToList();
        return (entries.Count(e => e!["kind"]!.GetValue<string>() == "debit"), entries.Count(e => e!["kind"]!.GetValue<string>() == "refund"));
    }

    private async Task<long> AppliedAsync(string serviceUrl, string path, CancellationToken ct) =>
        (await Env.GetJsonAsync($"{serviceUrl}/_faults/calls?path={Uri.EscapeDataString(path)}", ct))["applied"]!.GetValue<long>();

    private async Task<string> WaitTerminalAsync(string gid, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        string? last = null;
        while (clock.Elapsed < Patience)
        {
            using var response = await Env.Http.GetAsync($"{Env.CoordinatorUrl}/api/v1/transactions/{gid}", ct);
            if (response.IsSuccessStatusCode)
            {
                last = await response.Content.ReadAsStringAsync(ct);
                var status = JsonNode.Parse(last)!["status"]!.GetValue<string>();
                if (status is "committed" or "aborted")
                {
                    return status;
                }
            }

            await Task.Delay(TimeSpan.FromMilliseconds(50), TimeProvider.System, ct);
        }

        throw new TimeoutException($"{gid} did not end within {Patience.TotalSeconds:0} s: {last}");
    }
}
