using System.Diagnostics;
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

    /// <summary>Stops the broker (SIGKILL when <paramref name="kill"/>) and starts it again on the same data and port.</summary>
    internal Task RestartBrokerAsync(bool kill) => _broker.RestartAsync(kill);

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
    private DemoEnvironment Env => fixture.Env;

    private ChoreographyShop Shop => new(Env);

    [Fact]
    public Task RabbitMq_Book_OrderConfirmed_OneDebit_StockSold_NothingHeld_TimelineCommitted() => Shop.BookIsConfirmedOnceAsync(CancellationToken.None);

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
    public Task RabbitMq_PenOutOfStock_PaymentRefunded_OrderCancelledWithTheStock_MoneyConserved() => Shop.PenIsRefundedAndCancelledAsync(CancellationToken.None);

    [Fact]
    public async Task RabbitMq_BrokerKilledMidFlow_EveryCheckoutFinishes_NothingLostOrDoubled_MoneyAndStockConserved()
    {
        var ct = CancellationToken.None;
        var customers = new[] { "alice", "bob" };
        var balances = new Dictionary<string, decimal>();
        foreach (var customer in customers)
        {
            balances[customer] = await Shop.BalanceAsync(customer, ct);
        }

        var book = await Shop.StockAsync("book", ct);
        var pen = await Shop.StockAsync("pen", ct);

        // Inventory is down (SIGKILL), so six checkouts (alice: four books and a pen that is out of stock;
        // bob: one book) stop half way: Payment debits and publishes payment.reserved, which waits in
        // Inventory's durable queue, in the broker only. Once the broker confirmed all six, the broker is
        // SIGKILLed and started again on the same data; then Inventory starts again and the flows go on.
        Env.Shop("inventory").Kill();
        var placed = await Task.WhenAll(
            Enumerable.Range(0, 4).Select(_ => Place("alice", "book"))
                .Append(Place("alice", "pen"))
                .Append(Place("bob", "book")));
        await WaitAsync(async () => await ConfirmedByTheBrokerAsync("payment", "payment.reserved", placed.Select(p => p.Gid)) == placed.Length,
            "payment.reserved of the six checkouts confirmed by the broker");
        foreach (var p in placed)
        {
            (await Env.GetJsonAsync($"{Env.OrderUrl}/orders/{p.OrderId}", ct))["status"]!.GetValue<string>().ShouldBe("PENDING");
        }

        var clock = Stopwatch.StartNew();
        await fixture.RestartBrokerAsync(kill: true);
        output.WriteLine($"broker killed with six payment.reserved in Inventory's queue; it was back in {clock.Elapsed.TotalSeconds:F1} s");
        await Env.RestartShopAsync("inventory", ct);

        foreach (var (customer, sku, orderId, gid) in placed)
        {
            var tx = await Shop.WaitTerminalAsync(gid, ct);
            var order = await Shop.WaitOrderDecidedAsync(orderId, ct);
            var confirmed = sku == "book";
            order["status"]!.GetValue<string>().ShouldBe(confirmed ? "CONFIRMED" : "CANCELLED", $"{customer} {sku} {gid}");
            tx["status"]!.GetValue<string>().ShouldBe(confirmed ? "committed" : "aborted", gid);
            (await Shop.LedgerAsync(customer, gid, ct)).ShouldBe(confirmed ? (1, 0) : (1, 1), $"{customer} {sku} {gid}: debits, refunds");
        }

        output.WriteLine($"all finished {clock.Elapsed.TotalSeconds:F1} s after the kill");
        (balances["alice"] - await Shop.BalanceAsync("alice", ct)).ShouldBe(4 * 25.00m);
        (balances["bob"] - await Shop.BalanceAsync("bob", ct)).ShouldBe(25.00m);
        var bookAfter = await Shop.StockAsync("book", ct);
        (bookAfter.Sold - book.Sold).ShouldBe(5);
        (bookAfter.Available + bookAfter.Sold).ShouldBe(book.Available + book.Sold);
        bookAfter.Held.ShouldBe(0);
        (await Shop.StockAsync("pen", ct)).ShouldBe(pen);
        foreach (var customer in customers)
        {
            (await Shop.HeldMoneyAsync(customer, ct)).ShouldBe(0m, customer);
        }

        async Task<(string Customer, string Sku, string OrderId, string Gid)> Place(string customer, string sku)
        {
            var (orderId, gid) = await Shop.CheckoutAsync(customer, sku, 1, ct);
            return (customer, sku, orderId, gid);
        }
    }

    /// <summary>How many of the gids' events of this type a service's outbox has marked sent (the broker confirmed them).</summary>
    private async Task<int> ConfirmedByTheBrokerAsync(string service, string type, IEnumerable<string> gids)
    {
        var wanted = gids.ToHashSet(StringComparer.Ordinal);
        var path = Path.Combine(Env.Root, service, service + ".db");
        await using var connection = new Microsoft.Data.Sqlite.SqliteConnection($"Data Source={path};Mode=ReadOnly;Pooling=False");
        await connection.OpenAsync();
        await using var command = connection.CreateCommand();
        command.CommandText = "SELECT correlation_id FROM treaty_outbox WHERE type = $type AND sent_at IS NOT NULL";
        command.Parameters.AddWithValue("$type", type);
        await using var reader = await command.ExecuteReaderAsync();
        var count = 0;
        while (await reader.ReadAsync())
        {
            count += wanted.Contains(reader.GetString(0)) ? 1 : 0;
        }

        return count;
    }

    private static async Task WaitAsync(Func<Task<bool>> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!await condition())
        {
            if (clock.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new TimeoutException($"not within 60 s: {what}");
            }

            await Task.Delay(100);
        }
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
