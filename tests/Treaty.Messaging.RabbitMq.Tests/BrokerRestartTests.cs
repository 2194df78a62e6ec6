using System.Collections.Concurrent;
using System.Diagnostics;
using Treaty.Messaging.Transport;
using Xunit.Abstractions;

namespace Treaty.Messaging.RabbitMq.Tests;

/// <summary>Its own broker, since it restarts it.</summary>
public sealed class BrokerRestartTests(RabbitMqBroker broker, ITestOutputHelper output) : IClassFixture<RabbitMqBroker>
{
    [Theory]
    [InlineData(false)] // a graceful stop (SIGTERM)
    [InlineData(true)] // a crash (SIGKILL): confirmed persistent messages were already on disk
    public async Task BrokerRestartedMidStream_EveryMessageIsDeliveredAtLeastOnce_NoneLost(bool kill)
    {
        output.WriteLine($"broker first started in {broker.FirstStartTime.TotalSeconds:F1} s");
        const int total = 400;
        const int batch = 10;
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        var received = new ConcurrentDictionary<string, int>();
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), async (message, ct) =>
        {
            received.AddOrUpdate(message.MessageId, 1, (_, n) => n + 1);
            await Task.Delay(2, ct); // a consumer that takes a moment, so deliveries are in flight at the restart
            return DeliveryOutcome.Handled;
        }, default);

        var messages = Enumerable.Range(0, total).Select(_ => Messages.New("order.created")).ToList();
        var sendFailures = 0;
        var sent = 0;
        var clock = Stopwatch.StartNew();
        // The outbox relay's loop: a batch whose SendAsync threw is sent again, whole, until it is confirmed.
        var sender = Task.Run(async () =>
        {
            for (var i = 0; i < total; i += batch)
            {
                var chunk = messages.Skip(i).Take(batch).ToList();
                while (true)
                {
                    try
                    {
                        await transport.SendAsync(chunk, default);
                        Interlocked.Add(ref sent, chunk.Count);
                        break;
                    }
                    catch (Exception e) when (clock.Elapsed < TimeSpan.FromMinutes(2))
                    {
                        if (Interlocked.Increment(ref sendFailures) == 1)
                            output.WriteLine($"{clock.Elapsed.TotalSeconds:F1}s send failed: {e.GetType().Name}: {e.Message}");
                        await Task.Delay(200);
                    }
                }

                await Task.Delay(15);
            }
        });

        while (Volatile.Read(ref sent) < total / 3)
            await Task.Delay(10);
        var before = received.Count;
        var restart = Stopwatch.StartNew();
        await broker.RestartAsync(kill);
        output.WriteLine($"restarted at {before} received / {Volatile.Read(ref sent)} sent; the broker was back in {restart.Elapsed.TotalSeconds:F1} s (start {broker.LastStartTime.TotalSeconds:F1} s)");

        await sender.WaitAsync(TimeSpan.FromMinutes(3));
        var deadline = Stopwatch.StartNew();
        while (received.Count < total && deadline.Elapsed < TimeSpan.FromSeconds(60))
            await Task.Delay(100);

        var duplicates = received.Values.Sum() - received.Count;
        output.WriteLine($"{received.Count} distinct of {total}, {duplicates} duplicate deliveries, {sendFailures} failed sends, {clock.Elapsed.TotalSeconds:F1} s in all");
        before.ShouldBeLessThan(total, "the restart happened mid-stream");
        sendFailures.ShouldBeGreaterThan(0, "the restart interrupted the sender (else the test proved nothing about it)");
        messages.Select(m => m.MessageId).Except(received.Keys).ShouldBeEmpty("no message lost");
        received.Keys.Except(messages.Select(m => m.MessageId)).ShouldBeEmpty();
    }

    [Fact]
    public async Task Send_WhenTheBrokerDoesNotConfirmInTime_Throws_AndSucceedsOnceItAnswers()
    {
        var exchange = Messages.Exchange();
        var options = Messages.Options(broker, exchange);
        options.ConfirmTimeout = TimeSpan.FromSeconds(1);
        await using var transport = RabbitMqTransport.Create(options);
        await transport.DeclareSubscriptionAsync(new Subscription("payment", ["order.created"]), default);
        await transport.SendAsync([Messages.New("order.created")], default); // the publishing channel is open
        var message = Messages.New("order.created");

        // A frozen node keeps its sockets open: the publish leaves, the confirm never comes.
        await broker.PauseAsync(true);
        try
        {
            var clock = Stopwatch.StartNew();
            await Should.ThrowAsync<TimeoutException>(() => transport.SendAsync([message], default));
            clock.Elapsed.ShouldBeGreaterThanOrEqualTo(TimeSpan.FromMilliseconds(900));
        }
        finally
        {
            await broker.PauseAsync(false);
        }

        // The relay sends it again; the first copy may have arrived too (the consumer deduplicates).
        await transport.SendAsync([message], default);
        await using var raw = await RawChannel.OpenAsync(broker);
        (await raw.Channel.MessageCountAsync(RabbitMqTopology.MainQueue(exchange, "payment"))).ShouldBeInRange(2u, 3u);
    }

    [Fact]
    public async Task Dispose_WhileTheBrokerDoesNotAnswer_ReturnsWithinSeconds()
    {
        var exchange = Messages.Exchange();
        var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), (_, _) => Task.FromResult(DeliveryOutcome.Handled), default);
        await transport.SendAsync([Messages.New("order.created")], default);
        await broker.PauseAsync(true);
        try
        {
            var clock = Stopwatch.StartNew();
            await transport.DisposeAsync();
            output.WriteLine($"disposed in {clock.Elapsed.TotalSeconds:F1} s");
            clock.Elapsed.ShouldBeLessThan(TimeSpan.FromSeconds(10));
        }
        finally
        {
            await broker.PauseAsync(false);
        }
    }
}
