exports.handler = async (event) => {
  if (event && event.sleep) await new Promise((r) => setTimeout(r, event.sleep * 1000));
  return null;
};
