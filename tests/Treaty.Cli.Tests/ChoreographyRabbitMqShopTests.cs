using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Treaty.Messaging.RabbitMq.Tests;
using Xunit.Abstractions;

namespace Treaty.Cli.Tests;

/// <summary>A real rabbitmq-server on loopback, then the coordinator and the three Shop services with <c>--transport rabbitmq</c>.</summary>
public sealed class RabbitMqShopEnvironment : IAsyncLifetime
{
    private readonly RabbitMqBroker _broker = new();
    private DemoEnvironment? _env;

    internal DemoEnvironment Env => _env ?? throw new InvalidOperationException("not started");

    internal Uri BrokerUri => _broker.Uri;

    public async Task InitializeAsync()
    {
        await _broker.InitializeAsync();
        _env = await DemoEnvironment.StartAsync(dataDir: null, CancellationToken.None,
            shopArguments: ["--transport", "rabbitmq", "--rabbitmq", _broker.Uri.ToString()]);
    }

    public async Task DisposeAsync()
    {
        if (_env is not null)
        {
            await _env.DisposeAsync();
        }

        await _broker.DisposeAsync();
    }
}

/// <summary>
/// The Shop's choreographed checkout (<c>protocol: "choreography"</c>) with its events on RabbitMQ
/// (<c>--transport rabbitmq --rabbitmq URL</c>): one exchange, a queue per service, the same
/// outcomes and invariants as on the embedded transport (ChoreographyShopTests).
/// </summary>
[Collection(nameof(ChaosCollection))]
public sealed class ChoreographyRabbitMqShopTests(RabbitMqShopEnvironment fixture, ITestOutputHelper output) : IClassFixture<RabbitMqShopEnvironment>
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    private DemoEnvironment Env => fixture.Env;

    [Fact]
    public async Task RabbitMq_Book_OrderConfirmed_OneDebit_StockSold_NothingHeld_TimelineCommitted()
    {
        var ct = CancellationToken.None;
        var balance = await BalanceAsync("alice", ct);
        var book = await StockAsync("book", ct);

        var (orderId, gid) = await CheckoutAsync("alice", "book", ct);
        var tx = await WaitTerminalAsync(gid, ct);

        tx["status"]!.GetValue<string>().ShouldBe("committed");
        tx["protocol"]!.GetValue<string>().ShouldBe("choreography");
        await ShouldReportAsync(gid, ct, "order.created", "payment.reserved", "inventory.reserved", "order.confirmed");
        var order = await WaitOrderDecidedAsync(orderId, ct);
        order["status"]!.GetValue<string>().ShouldBe("CONFIRMED");
        (balance - await BalanceAsync("alice", ct)).ShouldBe(25.00m);
        (await LedgerAsync("alice", gid, ct)).ShouldBe((1, 0));
        var after = await StockAsync("book", ct);
        (after.Sold - book.Sold).ShouldBe(1);
        (after.Available + after.Sold).ShouldBe(book.Available + book.Sold);
        after.Held.ShouldBe(0);
        (await HeldMoneyAsync("alice", ct)).ShouldBe(0m);
    }

    [Fact]
    public async Task RabbitMq_EachServiceHasItsQueueOnTheSharedExchange_AndConsumesIt()
    {
        var factory = new RabbitMQ.Client.ConnectionFactory { Uri = fixture.BrokerUri, AutomaticRecoveryEnabled = false };
        await using var connection = await factory.CreateConnectionAsync();
        foreach (var service in new[] { "order", "payment", "inventory" })
        {
            await using var channel = await connection.CreateChannelAsync();
            // Passive: throws (404) when the queue is missing.
            var queue = await channel.QueueDeclarePassiveAsync("treaty.shop." + service);
            output.WriteLine($"{queue.QueueName}: {queue.ConsumerCount} consumer(s), {queue.MessageCount} ready");
            queue.ConsumerCount.ShouldBe(1u, service);
        }
    }

    [Fact]
    public async Task RabbitMq_PenOutOfStock_PaymentRefunded_OrderCancelledWithTheStock_MoneyConserved()
    {
        var ct = CancellationToken.None;
        var balance = await BalanceAsync("alice", ct);
        var pen = await StockAsync("pen", ct);

        var (orderId, gid) = await CheckoutAsync("alice", "pen", ct);
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

    private async Task<(string OrderId, string Gid)> CheckoutAsync(string customer, string sku, CancellationToken ct)
    {
        var body = new JsonObject
        {
            ["customerId"] = customer,
            ["items"] = new JsonArray(new JsonObject { ["sku"] = sku, ["qty"] = 1 }),
            ["protocol"] = "choreography",
        };
        using var request = new HttpRequestMessage(HttpMethod.Post, Env.OrderUrl + "/checkout") { Content = JsonContent.Create(body) };
        request.Headers.Add("Idempotency-Key", "choreo-rmq-" + Guid.NewGuid().ToString("N"));
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

/// <summary><c>--transport</c> and <c>--rabbitmq</c>: parsed, and a service that cannot use them refuses to start, saying why.</summary>
public sealed class ShopTransportOptionsTests
{
    private static readonly string[] Base = ["--service", "payment", "--urls", "http://127.0.0.1:5002", "--data-dir", "d", "--coordinator", "http://127.0.0.1:5000"];

    [Fact]
    public void Default_IsEmbedded_WithoutABroker()
    {
        var options = Shop.ShopOptions.Parse(Base, null);
        options.Transport.ShouldBe(Shop.ShopTransport.Embedded);
        options.RabbitMqUri.ShouldBeNull();
    }

    [Fact]
    public void RabbitMq_WithAnAmqpUrl_IsParsed()
    {
        var options = Shop.ShopOptions.Parse([.. Base, "--transport", "rabbitmq", "--rabbitmq", "amqp://guest:guest@127.0.0.1:5672/"], null);
        options.Transport.ShouldBe(Shop.ShopTransport.RabbitMq);
        options.RabbitMqUri.ShouldBe("amqp://guest:guest@127.0.0.1:5672/");
    }

    [Theory]
    [InlineData(new[] { "--transport", "rabbitmq" }, "--transport rabbitmq needs the broker: --rabbitmq")]
    [InlineData(new[] { "--transport", "rabbitmq", "--rabbitmq", "http://secret@127.0.0.1:5672/" }, "--rabbitmq must be an absolute amqp:// or amqps:// URL")]
    [InlineData(new[] { "--rabbitmq", "amqp://127.0.0.1:5672/" }, "--rabbitmq is only used with --transport rabbitmq")]
    [InlineData(new[] { "--transport", "kafka" }, "--transport must be embedded or rabbitmq, not 'kafka'")]
    public void Misconfigured_Throws_NamingTheFlag(string[] extra, string message)
    {
        var e = Should.Throw<ArgumentException>(() => Shop.ShopOptions.Parse([.. Base, .. extra], null));
        e.Message.ShouldContain(message);
        e.Message.ShouldNotContain("secret");
    }

    [Fact]
    public async Task RabbitMqWithoutAUrl_TheServiceExitsWith2_AndTheErrorOnStderr()
    {
        var info = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var arg in (string[])[Path.Combine(AppContext.BaseDirectory, "Shop.dll"), .. Base, "--transport", "rabbitmq"])
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await process.WaitForExitAsync(timeout.Token);
        process.ExitCode.ShouldBe(2);
        (await stderr).ShouldContain("--transport rabbitmq needs the broker: --rabbitmq");
    }
}
