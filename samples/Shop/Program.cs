using Shop;

ShopOptions options;
try
{
    options = ShopOptions.Parse(args);
}
catch (ArgumentException e)
{
    await Console.Error.WriteLineAsync(e.Message);
    await Console.Error.WriteLineAsync(ShopOptions.Usage);
    return 2;
}

await using var app = ShopApp.Build(options);
await app.RunAsync();
return 0;
