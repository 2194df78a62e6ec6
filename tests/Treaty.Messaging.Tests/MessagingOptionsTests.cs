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

    [Fact]
    public void Options_WithoutAServiceName_FailAtRegistration() =>
        Should.Throw<InvalidOperationException>(() =>
            new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddTreatyMessaging(o => o.MaxAttempts = 3));

    [Fact]
    public void Options_WithZeroAttempts_FailAtRegistration() =>
        Should.Throw<InvalidOperationException>(() =>
            new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddTreatyMessaging(o => { o.ServiceName = "x"; o.MaxAttempts = 0; }));
}
