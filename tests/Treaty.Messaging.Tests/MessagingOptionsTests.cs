using Microsoft.Extensions.DependencyInjection;
using Treaty.Messaging.RabbitMq;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Tests;

public sealed class MessagingOptionsTests
{
    [Theory]
    [InlineData(0, 0.5, 0)]
    [InlineData(1, 1.0, 200)]
    [InlineData(3, 1.0, 800)]
    [InlineData(3, 0.0, 400)]
    [InlineData(9, 1.0, 30_000)]
    [InlineData(1_000, 0.0, 15_000)]
    public void RetryBackoff_IsTheCoordinatorsBackoff_OnTheseDelays(int failures, double random01, int expectedMs) =>
        new MessagingOptions().RetryBackoff(failures, random01).ShouldBe(TimeSpan.FromMilliseconds(expectedMs));

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ATransportRegisteredInTheContainer_WinsOverTheEmbeddedDefault_InEitherOrder(bool rabbitFirst)
    {
        var services = new ServiceCollection();
        services.AddLogging();
        if (rabbitFirst)
        {
            services.UseRabbitMq(new Uri("amqp://127.0.0.1:1/"));
        }

        services.AddTreatyMessaging(o => o.ServiceName = "orders");
        if (!rabbitFirst)
        {
            services.UseRabbitMq(new Uri("amqp://127.0.0.1:1/"));
        }

        await using var provider = services.BuildServiceProvider();
        provider.GetRequiredService<IMessageTransport>().Name.ShouldBe("rabbitmq"); // it connects on first use, not here
    }

    [Fact]
    public async Task WithoutAnotherTransport_TheEmbeddedOneIsUsed()
    {
        var services = new ServiceCollection();
        services.AddTreatyMessaging(o => o.ServiceName = "orders");
        await using var provider = services.BuildServiceProvider();
        provider.GetRequiredService<IMessageTransport>().Name.ShouldBe("embedded");
    }

    [Fact]
    public void Options_WithoutAServiceName_FailAtRegistration() =>
        Should.Throw<InvalidOperationException>(() =>
            new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddTreatyMessaging(o => o.MaxAttempts = 3));

    [Fact]
    public void Options_WithZeroAttempts_FailAtRegistration() =>
        Should.Throw<InvalidOperationException>(() =>
            new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddTreatyMessaging(o => { o.ServiceName = "x"; o.MaxAttempts = 0; }));
}
